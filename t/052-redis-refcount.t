#!/usr/bin/perl
#
# 052-redis-refcount.t: a worker is subscribed to a session's channel
# exactly while it has connections in that session (issue 5:
# "subscribe/unsubscribe refcounts return to zero when all clients leave
# (check with PUBSUB CHANNELS)").
#
# One nginx with 2 workers and collab_redis ... prefix=t52:; connections
# are placed on known workers (GET /pid on the keep-alive connection, then
# the upgrade).  Redis is asked over a socket, PUBSUB NUMSUB / CHANNELS,
# at each step: nothing before a join; one subscriber per worker holding a
# member; a "leave" by one of two members on a worker keeps it subscribed,
# the other closing its socket unsubscribes it; a second session has its
# own channel; a connection joining and leaving 30 times ends
# unsubscribed and a last join subscribes again; when every client has
# left no channel remains.  Channels are polled briefly (UNSUBSCRIBE is
# asynchronous), never timed.

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

$t->start_nginx(<<'CONF', worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=2 timeout=30s;
    collab_redis 127.0.0.1:%%REDIS_PORT%% prefix=t52:;

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
my $rport = $t->redis_port;
my $dbh = $t->pg_dbh;

my $n = 0;

# a connection served by worker $pid
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

sub numsub {
    my ($chan) = @_;
    return Redis::Tiny::cmd($rport, 'PUBSUB', 'NUMSUB', $chan)->[1];
}

sub channels {
    return join ' ', sort @{ Redis::Tiny::cmd($rport, 'PUBSUB', 'CHANNELS',
                                              't52:s:*') };
}

# polls until $get->() returns $want (or 5 s pass), returns the last value
sub eventually {
    my ($get, $want) = @_;
    my $end = time + 5;
    my $v;
    while (1) {
        $v = $get->();
        return $v if $v eq $want || time > $end;
        sleep 0.05;
    }
}

sub session {
    my ($c, $title) = @_;
    my $slug = $c->req(op => 'create', title => $title,
                       isPublic => \1)->{session}{id};
    my $id = $dbh->selectrow_array(
        'SELECT id FROM chat_sessions WHERE slug = ?', undef, $slug);
    return ($slug, "t52:s:$id");
}

my @a = map { on_worker($w[0]) } 1 .. 2;
my @b = map { on_worker($w[1]) } 1 .. 2;

my ($s1, $ch1) = session($a[0], 'one');
my ($s2, $ch2) = session($a[0], 'two');

is(channels(), '', 'no channel before any join (create does not subscribe)');

is($a[0]->req(op => 'join', session => $s1)->{op}, 'joined',
   'a0 joins session 1');
is(eventually(sub { numsub($ch1) }, 1), 1,
   "$ch1: one subscriber (the channel carries the prefix)");

for my $c ($a[1], @b) {
    is($c->req(op => 'join', session => $s1)->{op}, 'joined',
       $c->user . ' joins session 1');
}
is(eventually(sub { numsub($ch1) }, 2), 2,
   'two workers with members: two subscribers');
is(channels(), $ch1, 'only that channel');

is($b[0]->req(op => 'join', session => $s2)->{op}, 'joined',
   'b0 joins session 2 as well');
is(eventually(\&channels, join ' ', sort $ch1, $ch2), join(' ', sort $ch1,
   $ch2), 'both channels');
is(numsub($ch2), 1, "$ch2: one subscriber");

# worker 0: one member leaves, one remains
is($a[0]->req(op => 'leave', session => $s1)->{op}, 'left', 'a0 leaves');
sleep 0.3;
is(numsub($ch1), 2, 'worker 0 keeps its subscription for its other member');

$a[1]->close;
is(eventually(sub { numsub($ch1) }, 1), 1,
   "worker 0's last member closed: it unsubscribed");

# the same connection joining and leaving again and again
my $cycles = 0;
for my $k (1 .. 30) {
    my $j = $a[0]->req(op => 'join', session => $s2);
    my $l = $a[0]->req(op => 'leave', session => $s2);
    $cycles++ if $j->{op} eq 'joined' && $l->{op} eq 'left';
}
is($cycles, 30, '30 join/leave cycles on worker 0');
is(eventually(sub { numsub($ch2) }, 1), 1,
   "$ch2: worker 0 ends unsubscribed, worker 1 still subscribed");
is($a[0]->req(op => 'join', session => $s2)->{op}, 'joined',
   'a0 joins session 2 once more');
is(eventually(sub { numsub($ch2) }, 2), 2, 'and worker 0 subscribes again');

# a message still flows between the workers (the subscriptions work)
my $r = $a[0]->req(op => 'send', session => $s2, body => 'hi',
                   clientMsgId => 'm1');
is($r->{op}, 'ack', 'a0 sends in session 2');
my $e = $b[0]->take(sub { $_->{op} eq 'message' && $_->{session} eq $s2 },
                    10);
is($e && $e->{clientMsgId}, 'm1', 'b0, on the other worker, receives it');

# everyone leaves, in different ways
$a[0]->req(op => 'leave', session => $s2);
$b[0]->req(op => 'leave', session => $s1);
$b[1]->close;
is(eventually(sub { numsub($ch1) }, 0), 0, "$ch1: no subscriber left");
$b[0]->close;
$a[0]->close;
is(eventually(\&channels, ''), '', 'no channel once every client left');

# and the count starts from zero again
my $c = on_worker($w[1]);
is($c->req(op => 'join', session => $s1)->{op}, 'joined', 'a new join');
is(eventually(sub { numsub($ch1) }, 1), 1, 'one subscriber again');
$c->close;
is(eventually(\&channels, ''), '', 'and none after it closed');

$dbh->disconnect;

done_testing();
