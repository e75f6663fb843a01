#!/usr/bin/perl
#
# 053-redis-config.t: the collab_redis directive and the startup warning
# (issue 5: "with several workers and no Redis it says at startup, in the
# log, that cross-worker delivery needs Redis").
#
# nginx -t refuses malformed collab_redis lines with a message naming the
# problem.  With collab_postgres and 2 workers but no collab_redis the
# error.log has a warning naming collab_redis; with 1 worker, or with
# collab_redis, it has none.  With Redis requiring a password
# (CONFIG SET requirepass), password= and password_file= with db=3
# work: both workers' Redis connections are authenticated and on db 3
# (CLIENT LIST), each worker subscribes, and a message crosses workers.
# With a wrong password the error.log must say that Redis refused it
# (otherwise the relay is silently dead), and the workers must back off
# rather than reconnect in a tight loop.

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

# the snippet with @@REDIS@@ and @@PORT@@ replaced
sub conf {
    my ($snippet, $redis, $port) = @_;
    $snippet =~ s/\@\@REDIS\@\@/$redis/;
    $snippet =~ s/\@\@PORT\@\@/$port/ if defined $port;
    return $snippet;
}

# --- the directive ------------------------------------------------------------

my $http = <<'CONF';
    @@REDIS@@
    server {
        listen 127.0.0.1:%%PORT%%;
        location /chat { collab_websocket; collab_user $http_x_user_id; }
    }
CONF

for my $case (
    ['collab_redis 127.0.0.1;', qr/invalid redis address "127\.0\.0\.1"/],
    ['collab_redis 127.0.0.1:0;', qr/invalid redis address/],
    ['collab_redis 127.0.0.1:65536;', qr/invalid redis address/],
    ['collab_redis :6379;', qr/invalid redis address/],
    ['collab_redis 127.0.0.1:6379 colour=blue;',
     qr/invalid parameter "colour=blue"/],
    ['collab_redis 127.0.0.1:6379 db=x;', qr/invalid parameter "db=x"/],
    ['collab_redis 127.0.0.1:6379; collab_redis 127.0.0.1:6380;',
     qr/"collab_redis" directive is duplicate/],
    ['collab_redis 127.0.0.1:6379 password_file=/nonexistent/pass;',
     qr{/nonexistent/pass}],
    ['collab_redis;', qr/invalid number of arguments/],
    )
{
    my ($ok, $out) = $t->nginx_test_conf(conf($http, $case->[0]));
    ok(!$ok && $out =~ $case->[1], "nginx -t refuses: $case->[0]")
        or diag($out);
}

{
    my $snippet = $http;
    $snippet =~ s/(location \/chat \{)/$1 collab_redis 127.0.0.1:6379;/;
    my ($ok, $out) = $t->nginx_test_conf(conf($snippet, ''));
    ok(!$ok && $out =~ /"collab_redis" directive is not allowed here/,
       'collab_redis is an http-level directive') or diag($out);
}

for my $good ('collab_redis 127.0.0.1:6379;',
              'collab_redis unix:/run/redis.sock db=2 prefix=x:;',
              'collab_redis 127.0.0.1:6379 password=p db=15;')
{
    my ($ok, $out) = $t->nginx_test_conf(conf($http, $good));
    ok($ok, "nginx -t accepts: $good") or diag($out);
}

# --- the warning without Redis ---------------------------------------------

my $WARN = qr/\[warn\].*collab:\ 2\ workers\ and\ no\ "collab_redis"
              .*configure\ collab_redis/x;

my $chat = <<'CONF';
    collab_postgres "%%PG_DSN%%" pool=1 timeout=30s;
    @@REDIS@@
    server {
        listen 127.0.0.1:@@PORT@@;
        location = /pid { return 200 $pid; }
        location /chat { collab_websocket; collab_user $http_x_user_id; }
    }
CONF

sub wait_log {
    my ($name, $re) = @_;
    my $end = time + 5;
    while (time < $end) {
        return 1 if $t->error_log($name) =~ $re;
        sleep 0.05;
    }
    return 0;
}

$t->start_nginx(conf($chat, '', '%%PORT2%%'), name => 'two',
                worker_processes => 2);
ok(wait_log('two', $WARN),
   '2 workers, no collab_redis: the log says to configure collab_redis');
my $said = () = $t->error_log('two') =~ /collab: \d+ workers and no/g;
is($said, 1, 'said once, not by every worker');
$t->stop_nginx(name => 'two');

$t->start_nginx(conf($chat, '', '%%PORT3%%'), name => 'one');
$t->start_nginx(conf($chat, "collab_redis 127.0.0.1:$rport;",
                        '%%PORT4%%'), name => 'relay', worker_processes => 2);
sleep 0.5;
unlike($t->error_log('one'), qr/no "collab_redis"/, '1 worker: no warning');
unlike($t->error_log('relay'), qr/no "collab_redis"/,
       '2 workers with collab_redis: no warning');
$t->stop_nginx(name => 'one');
$t->stop_nginx(name => 'relay');

# --- password, password_file, db -------------------------------------------

is(Redis::Tiny::cmd($rport, 'CONFIG', 'SET', 'requirepass', 's3cret'), 'OK',
   'Redis now requires a password');

sub authed {
    my (@cmd) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $rport, Proto => 'tcp',
                                  Timeout => 5) or die "redis: $!";
    binmode $s;
    my $out = '';
    for my $args (['AUTH', 's3cret'], \@cmd) {
        print $s '*' . @$args . "\r\n"
            . join('', map { '$' . length($_) . "\r\n$_\r\n" } @$args);
        $out = Redis::Tiny::_reply($s);
    }
    close $s;
    return $out;
}

my $pass_file = $t->dir . '/redis.pass';
open my $fh, '>', $pass_file or die "$pass_file: $!";
print $fh "s3cret\n";
close $fh;

my %relay_conf = (
    password => "collab_redis 127.0.0.1:$rport password=s3cret db=3"
                . ' prefix=pw:;',
    password_file => "collab_redis 127.0.0.1:$rport"
                     . " password_file=$pass_file db=3 prefix=pw:;",
);

my $port_n = 5;
for my $kind (qw(password password_file)) {
    my $port = $t->port($port_n++);
    $t->start_nginx(conf($chat, $relay_conf{$kind}, $port), name => $kind,
                    worker_processes => 2);
    my @pids = $t->nginx_worker_pids($kind);

    # 2 workers x (subscriber + publisher), all on db 3
    my @mine;
    my $end = time + 10;
    while (time < $end) {
        @mine = grep { /\bdb=3\b/ } split /\n/, authed('CLIENT', 'LIST');
        last if @mine >= 4;
        sleep 0.05;
    }
    is(scalar @mine, 4, "$kind: 4 connections on db 3 (subscriber and"
       . ' publisher per worker)') or diag(authed('CLIENT', 'LIST'));

    my (%c, $n);
    for (1 .. 200) {
        last if keys %c == 2;
        my $c = Chat->open_on_worker($t, port => $port,
                                     user => "$kind" . $n++);
        if ($c{ $c->pid }) {
            $c->close;
            next;
        }
        $c{ $c->pid } = $c;
    }
    my ($x, $y) = @c{@pids};
    ok($x && $y, "$kind: a connection on each worker");
    my $slug = $x->req(op => 'create', title => $kind,
                       isPublic => \1)->{session}{id};
    is($_->req(op => 'join', session => $slug)->{op}, 'joined',
       "$kind: joined on worker " . $_->pid) for $x, $y;
    my $sid = $t->pg_dbh->selectrow_array(
        'SELECT id FROM chat_sessions WHERE slug = ?', undef, $slug);
    my $numsub;
    $end = time + 5;
    while (time < $end) {
        $numsub = authed('PUBSUB', 'NUMSUB', "pw:s:$sid")->[1];
        last if $numsub == 2;
        sleep 0.05;
    }
    is($numsub, 2, "$kind: both workers subscribed to pw:s:$sid");
    is($x->req(op => 'send', session => $slug, body => 'over',
               clientMsgId => 'm1')->{op}, 'ack', "$kind: sent");
    my $e = $y->take(sub { $_->{op} eq 'message' }, 10);
    is($e && $e->{body}, 'over', "$kind: the other worker's connection"
       . ' got it');
    $_->close for $x, $y;
    $t->stop_nginx(name => $kind);
}

# a wrong password: the relay cannot work, and the log must say why
$t->start_nginx(conf($chat, "collab_redis 127.0.0.1:$rport"
                               . ' password=wrong;', $t->port(9)),
                name => 'wrong', worker_processes => 2);
my $started = time;
ok(wait_log('wrong', qr/collab: redis.*(?:auth|password|WRONGPASS|NOAUTH)/i),
   'a wrong password: error.log says Redis refused it')
    or diag(join '', grep { /redis/ } split /^/, $t->error_log('wrong'));

# Redis accepts the connection and then refuses it: that is a failure
# too, and the retries back off (from 100 ms, doubling: some 6 in 3 s;
# a slower machine can only make fewer)
sleep 0.05 while time - $started < 3;
my $log = $t->error_log('wrong');
for my $pid ($t->nginx_worker_pids('wrong')) {
    my $lost = () = $log =~ /\b$pid\#\d+:\ collab:\ redis\ subscriber:
                              \ connection\ lost/gx;
    ok($lost <= 10, "a wrong password: worker $pid backs off"
       . " ($lost reconnects in its first 3 s, at most 10 wanted)");
}
$t->stop_nginx(name => 'wrong');

authed('CONFIG', 'SET', 'requirepass', '');

done_testing();
