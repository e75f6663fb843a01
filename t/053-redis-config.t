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
# rather than reconnect in a tight loop.  A server that accepts the
# connection and never answers PING is given up on after 3 s and retried.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;
use Collab::RedisTiny;

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

is(Collab::RedisTiny::cmd($rport, 'CONFIG', 'SET', 'requirepass', 's3cret'),
   'OK', 'Redis now requires a password');

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
        $out = Collab::RedisTiny::reply($s);
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
        my $c = Collab::Chat->open_on_worker($t, port => $port,
                                             user => "$kind" . $n++,
                                             nontext => 'drop');
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

# a "Redis" that takes the connection (the kernel completes it from the
# listen backlog) and never answers: each worker gives up after 3 s,
# says so and tries again, and chat within a worker goes on meanwhile
my $mute = IO::Socket::INET->new(Listen => 16, LocalAddr => '127.0.0.1',
                                 LocalPort => 0, Proto => 'tcp',
                                 ReuseAddr => 1) or die "listen: $!";
my $mport = $mute->sockport;
$t->start_nginx(conf($chat, "collab_redis 127.0.0.1:$mport;", $t->port(10)),
                name => 'mute', worker_processes => 2);
{
    my $c = Collab::Chat->open($t, port => $t->port(10), user => 'mute1');
    my $slug = $c->req(op => 'create', title => 'mute',
                       isPublic => \1)->{session}{id};
    is($c->req(op => 'join', session => $slug)->{op}, 'joined',
       'a mute Redis: a connection joins a session');
    is($c->req(op => 'send', session => $slug, body => 'still here',
               clientMsgId => 'm1')->{op}, 'ack',
       'a mute Redis: a message is stored and acknowledged');
    $c->close;
}
my $end = time + 10;
my $timeouts = 0;
while (time < $end) {
    $timeouts = () = $t->error_log('mute')
                     =~ /collab: redis \w+: connect timed out/g;
    last if $timeouts >= 4;
    sleep 0.1;
}
ok($timeouts >= 4, 'a mute Redis: every link of both workers times out'
   . " ($timeouts)") or diag($t->error_log('mute'));
$t->stop_nginx(name => 'mute');
close $mute;

done_testing();
