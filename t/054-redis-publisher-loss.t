#!/usr/bin/perl
#
# 054-redis-publisher-loss.t: a message whose PUBLISH was lost still
# reaches the other workers when nothing is sent after it (issue 5:
# "every connection has every acked message exactly once"; DESIGN.md
# invariant 2, "Nothing acknowledged is lost").
#
# One nginx, 2 workers X and Y, a member on each.  Redis stays up and the
# subscribers stay connected, but the workers' publisher connections are
# killed (CLIENT KILL) while Redis refuses new clients (CONFIG SET
# maxclients 1, the test keeping the one admin connection): a message
# sent on Y now is stored and acked but cannot be published.  Then Redis
# accepts clients again and the publishers reconnect, and nothing more is
# sent.  X's member must still get the message (from a resync, a
# re-publish, anything).  Last, one more message from Y must reach X after
# the first, in order (the gap healing).
#
# Why: the same happens on any hiccup of one publisher connection (a
# network blip, Redis dropping a client), or when a worker's publisher
# reconnects after its own subscriber following a Redis restart; the
# receivers' gap healing needs a later event, which a quiet session may
# never get.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;

{
# --- a collab.v1 client on the harness's raw WebSocket ----------------------
#
# (The client of t/03x-chat-*.t, plus open_on_worker(): a GET /pid on the
# keep-alive connection before the upgrade tells which worker serves it.)

package Chat;

use strict;
use warnings;

use Carp qw(croak);
use Digest::SHA qw(sha1_base64);
use IO::Select;
use MIME::Base64 qw(encode_base64);
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(time);

my $NREF = 0;

# Chat->open_on_worker($t, port => ..., user => ..., path => '/chat'):
# the client, with {pid} = the worker that serves its connection
sub open_on_worker {
    my ($class, $t, %o) = @_;
    my $port = $o{port};
    my $s = $t->_connect($port);
    local $SIG{PIPE} = 'IGNORE';

    print $s "GET /pid HTTP/1.1\r\nHost: 127.0.0.1:$port\r\n\r\n";
    my ($status, $h) = Collab::Test::_read_head($s, time + 10);
    croak "GET /pid: no answer" unless defined $status && $status == 200;
    my $pid = Collab::Test::_take($s, $h->{'content-length'}, time + 10);
    croak "GET /pid: no body" unless defined $pid && $pid =~ /^\d+$/;

    my $key = encode_base64(join('', map { chr int rand 256 } 1 .. 16), '');
    print $s "GET " . ($o{path} // '/chat') . " HTTP/1.1\r\n"
        . "Host: 127.0.0.1:$port\r\n"
        . "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        . "Sec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n"
        . "Sec-WebSocket-Protocol: collab.v1\r\n"
        . "X-User-Id: $o{user}\r\n\r\n";
    ($status, $h) = Collab::Test::_read_head($s, time + 10);
    croak "upgrade: status " . ($status // 'none') unless ($status // 0) == 101;
    my $want = sha1_base64($key . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
        . '=';
    croak "upgrade: bad Sec-WebSocket-Accept"
        unless ($h->{'sec-websocket-accept'} // '') eq $want;

    my $self = bless { t => $t, s => $s, inbox => [], user => $o{user},
                       pid => $pid, frag => undef }, $class;
    $self->_parse;
    return $self;
}

# Chat->open($t, user => 'u1', port => ...): a plain client
sub open {
    my ($class, $t, %o) = @_;
    my %h = ('Sec-WebSocket-Protocol' => 'collab.v1');
    $h{'X-User-Id'} = $o{user} if defined $o{user};
    $h{-port} = $o{port} if defined $o{port};
    my $s = $t->ws_raw($o{path} // '/chat', %h);
    my $self = bless { t => $t, s => $s, inbox => [], user => $o{user},
                       frag => undef }, $class;
    $self->_parse;
    return $self;
}

sub user { $_[0]{user} }
sub pid { $_[0]{pid} }

sub close {
    my ($self) = @_;
    CORE::close($self->{s}) if $self->{s};
    $self->{eof} = 1;
}

sub send {
    my ($self, $req) = @_;
    return $self->{t}->ws_send($self->{s}, opcode => 1,
                               payload => encode_json($req));
}

sub _parse {
    my ($self) = @_;
    my $s = $self->{s};
    my $buf = \${*$s}{collab_buf};
    while (1) {
        my $have = length $$buf;
        last if $have < 2;
        my ($b0, $b1) = unpack 'CC', $$buf;
        my $len = $b1 & 0x7f;
        my $off = 2;
        if ($len == 126) {
            last if $have < 4;
            $len = unpack 'n', substr($$buf, 2, 2);
            $off = 4;
        } elsif ($len == 127) {
            last if $have < 10;
            $len = unpack 'Q>', substr($$buf, 2, 8);
            $off = 10;
        }
        $off += 4 if $b1 & 0x80;
        last if $have < $off + $len;
        my $payload = substr($$buf, $off, $len);
        substr($$buf, 0, $off + $len, '');

        my ($fin, $op) = ($b0 & 0x80, $b0 & 0x0f);
        if ($op == 9) {
            $self->{t}->ws_send($s, opcode => 10, payload => $payload);
            next;
        }
        next if $op == 10;
        if ($op == 8) {
            $self->{close_code} = length $payload >= 2
                ? unpack('n', $payload) : 0;
            next;
        }
        if ($op == 0) {
            $self->{frag} .= $payload;
            next unless $fin;
            $payload = delete $self->{frag};
            $op = 1;
        } elsif (!$fin) {
            $self->{frag} = $payload;
            next;
        }
        next if $op != 1;
        my $msg = eval { decode_json($payload) }
            // { op => '(not JSON)', raw => $payload };
        push @{ $self->{inbox} }, $msg;
    }
}

sub _read {
    my ($self) = @_;
    my $n = sysread($self->{s}, my $chunk, 1 << 18);
    if (!defined $n) {
        return 1 if $!{EINTR} || $!{EAGAIN};
        $self->{eof} = 1;
        return 0;
    }
    if ($n == 0) {
        $self->{eof} = 1;
        return 0;
    }
    ${*{ $self->{s} }}{collab_buf} .= $chunk;
    $self->_parse;
    return 1;
}

sub pump {
    my ($timeout, @c) = @_;
    @c = grep { !$_->{eof} } @c;
    return 0 unless @c;
    my %by = map { fileno($_->{s}) => $_ } @c;
    my @r = IO::Select->new(map { $_->{s} } @c)->can_read($timeout);
    $by{ fileno $_ }->_read for @r;
    return scalar @r;
}

sub take {
    my ($self, $pred, $timeout) = @_;
    my $end = time + ($timeout // 10);
    while (1) {
        my $in = $self->{inbox};
        for my $i (0 .. $#$in) {
            local $_ = $in->[$i];
            return splice(@$in, $i, 1) if $pred->();
        }
        return undef if $self->{eof} || time >= $end;
        pump($end - time, $self);
    }
}

sub req {
    my ($self, %r) = @_;
    my $timeout = delete $r{-timeout} // 15;
    $r{ref} //= 'r' . ++$NREF;
    my $ref = $r{ref};
    $self->send(\%r);
    return $self->take(sub { defined $_->{ref} && $_->{ref} eq $ref },
                       $timeout)
        // { op => '(no reply)', ref => $ref };
}


# --- Redis over a socket (RESP) ---------------------------------------------

package Redis::Tiny;

use Carp qw(croak);
use IO::Socket::INET;

sub cmd {
    my ($port, @args) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 5)
        or croak "redis: connect $port: $!";
    binmode $s;
    print $s '*' . @args . "\r\n"
        . join('', map { '$' . length($_) . "\r\n$_\r\n" } @args);
    my $r = _reply($s);
    CORE::close($s);
    return $r;
}

sub _reply {
    my ($s) = @_;
    my $line = <$s> // croak "redis: no reply";
    $line =~ s/\r\n$//;
    my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));
    return $rest if $type eq '+' || $type eq ':';
    return { error => $rest } if $type eq '-';
    if ($type eq '$') {
        return undef if $rest < 0;
        my $data = '';
        while (length $data < $rest + 2) {
            read($s, $data, $rest + 2 - length $data, length $data)
                or croak "redis: short read";
        }
        return substr($data, 0, $rest);
    }
    if ($type eq '*') {
        return undef if $rest < 0;
        return [map { _reply($s) } 1 .. $rest];
    }
    croak "redis: bad reply '$line'";
}

}

my $t = Collab::Test->new;
$t->start_pg;
$t->start_redis;
my $rport = $t->redis_port;

$t->start_nginx(<<'CONF', worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=2 timeout=30s;
    collab_redis 127.0.0.1:%%REDIS_PORT%%;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location = /pid {
            return 200 $pid;
        }

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
        }
    }
CONF

my @w = $t->nginx_worker_pids;
is(scalar @w, 2, 'two workers');

my $n = 0;
sub on_worker {
    my ($pid) = @_;
    for (1 .. 200) {
        my $c = Chat->open_on_worker($t, port => $t->port,
                                     user => 'u' . $n++);
        return $c if $c->pid == $pid;
        $c->close;
    }
    die "no connection reached worker $pid\n";
}

my ($x, $y) = (on_worker($w[0]), on_worker($w[1]));
my $slug = $x->req(op => 'create', title => 'quiet',
                   isPublic => \1)->{session}{id};
is($_->req(op => 'join', session => $slug)->{op}, 'joined',
   $_->user . ' joined on worker ' . $_->pid) for $x, $y;

# the admin connection stays open through "maxclients 1"
my $admin = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $rport,
                                  Proto => 'tcp', Timeout => 5)
    or die "redis: $!";
binmode $admin;

sub admin {
    my (@args) = @_;
    print $admin '*' . @args . "\r\n"
        . join('', map { '$' . length($_) . "\r\n$_\r\n" } @args);
    return Redis::Tiny::_reply($admin);
}

admin('CLIENT', 'SETNAME', 'admin');

# nginx's connections that are not subscribed: the publishers
sub publishers {
    return grep { !/ name=admin / && / sub=0 / && / psub=0 / }
           split /\n/, admin('CLIENT', 'LIST');
}

sub wait_publishers {
    my ($want) = @_;
    my $end = time + 15;
    my @p;
    while (1) {
        @p = publishers();
        return scalar @p if @p == $want || time > $end;
        sleep 0.05;
    }
}

is($y->req(op => 'send', session => $slug, body => 'one',
           clientMsgId => 'm1')->{op}, 'ack', 'y sends m1');
my $e = $x->take(sub { $_->{op} eq 'message' }, 10);
is($e && $e->{seq}, 1, 'x gets m1 through Redis');
is(wait_publishers(2), 2, 'two publisher connections');

is(admin('CONFIG', 'SET', 'maxclients', 1), 'OK', 'Redis refuses clients');
for my $p (publishers()) {
    my ($id) = $p =~ /\bid=(\d+)/;
    admin('CLIENT', 'KILL', 'ID', $id);
}
is(wait_publishers(0), 0, 'the publishers are gone');

is($y->req(op => 'send', session => $slug, body => 'two',
           clientMsgId => 'm2')->{op}, 'ack', 'y sends m2: stored, acked');
my $ey = $y->take(sub { $_->{op} eq 'message' && $_->{seq} == 2 }, 10);
ok($ey, "y's own worker delivers m2");

is(admin('CONFIG', 'SET', 'maxclients', 10000), 'OK',
   'Redis accepts clients again');
is(wait_publishers(2), 2, 'the publishers are back');

# nothing more is sent: m2 must reach x anyway
$e = $x->take(sub { $_->{op} eq 'message' }, 10);
is($e && $e->{seq}, 2, 'x gets m2 with nothing sent after it')
    or diag('x got ' . ($e ? "seq $e->{seq}" : 'nothing') . ' in 10 s');

# a later message shows x the gap at the latest
is($y->req(op => 'send', session => $slug, body => 'three',
           clientMsgId => 'm3')->{op}, 'ack', 'y sends m3');
my @seqs = map { $_->{seq} } grep { $_ }
           map { $x->take(sub { $_->{op} eq 'message' }, 10) }
           1 .. ($e && $e->{seq} == 2 ? 1 : 2);
unshift @seqs, 2 if $e && $e->{seq} == 2;
is("@seqs", '2 3', 'x has m2 then m3');

$x->close;
$y->close;
close $admin;

done_testing();
