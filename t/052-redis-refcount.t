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
use Collab::Chat;
use Collab::RedisTiny;

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
        my $c = Collab::Chat->open_on_worker($t, port => $t->port,
                                             user => 'u' . $n++,
                                             nontext => 'drop');
        return $c if $c->pid == $pid;
        $c->close;
    }
    die "no connection reached worker $pid\n";
}

sub numsub {
    my ($chan) = @_;
    return Collab::RedisTiny::cmd($rport, 'PUBSUB', 'NUMSUB', $chan)->[1];
}

sub channels {
    return join ' ', sort @{
        Collab::RedisTiny::cmd($rport, 'PUBSUB', 'CHANNELS', 't52:s:*')
    };
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
