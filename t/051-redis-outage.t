#!/usr/bin/perl
#
# 051-redis-outage.t: Redis killed for 5 seconds under traffic, then
# started again on the same port (issue 5: "after it returns, every
# connection has every acked message exactly once (compare against the
# table)").
#
# 2 nginx instances x 2 workers, 6 connections on each worker (found as in
# 050: GET /pid on the keep-alive connection, then the upgrade), all in one
# session, one sender per worker sending all the time.  Redis is killed
# with SIGKILL; the senders go on for 2.5 s, then only one connection
# sends: what it sends while Redis is down reaches the other workers by
# no other path than the resync each worker runs from PostgreSQL when its
# subscriber is back (no later event shows them a gap).  Its own worker's
# connections must get those messages while Redis is still down
# ("same-worker delivery goes on").  After 5 s Redis starts again on the
# same port, empty; all four senders send some more; then every connection
# must hold every row of chat_messages exactly once and in seq order, no
# connection was closed, every send was acked, each worker logged the lost
# and regained Redis connection, and each worker subscribed again.
#
# Why: invariant 7 of DESIGN.md ("Redis down: same-worker delivery goes
# on; on reconnect clients resync from PostgreSQL by seq").

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Mojo::JSON qw(encode_json);
use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;
use Collab::RedisTiny;

my $t = Collab::Test->new;
$t->start_pg;
$t->start_redis;

my $conf = <<'CONF';
    collab_postgres "%%PG_DSN%%" pool=4 timeout=30s;
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_batch_window 2ms;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location = /pid {
            return 200 $pid;
        }

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
            collab_send_queue_size 16m;
        }
    }
CONF

(my $conf_b = $conf) =~ s/%%PORT%%/%%PORT2%%/;
$t->start_nginx($conf, name => 'a', worker_processes => 2);
$t->start_nginx($conf_b, name => 'b', worker_processes => 2);
my %port = (a => $t->port(1), b => $t->port(2));
my %workers = map { $_ => [$t->nginx_worker_pids($_)] } qw(a b);
my @all_workers = map { @{ $workers{$_} } } qw(a b);
is(scalar @all_workers, 4, 'four workers in two instances');

my $dbh = $t->pg_dbh;
my $rport = $t->redis_port;
my $rdir = $t->dir . '/redis';

my $PER_WORKER = 6;

sub spread {
    my ($inst) = @_;
    my (%on, @c);
    my $n = 0;
    for my $try (1 .. 400) {
        last if @c == 2 * $PER_WORKER;
        my $c = Collab::Chat->open_on_worker($t, port => $port{$inst},
                                             user => "u$inst" . $n++,
                                             nontext => 'drop');
        if (($on{ $c->pid } // 0) >= $PER_WORKER) {
            $c->close;
            next;
        }
        $on{ $c->pid }++;
        $c->{inst} = $inst;
        push @c, $c;
    }
    return @c;
}

my @clients = (spread('a'), spread('b'));
my %by_worker;
push @{ $by_worker{ $_->pid } }, $_ for @clients;
is(scalar(grep { @{ $by_worker{$_} // [] } == $PER_WORKER } @all_workers),
   4, "$PER_WORKER connections on each of the four workers");

my $owner = Collab::Chat->open($t, user => 'owner', port => $port{a},
                                nontext => 'drop');
my $slug = $owner->req(op => 'create', title => 'outage',
                       isPublic => \1)->{session}{id};
my $sid = $dbh->selectrow_array(
    'SELECT id FROM chat_sessions WHERE slug = ?', undef, $slug);
ok($sid, 'session created');
$owner->close;

$_->send({ op => 'join', session => $slug, ref => 'join' }) for @clients;
is(scalar(grep { my $j = $_->take(sub { ($_->{ref} // '') eq 'join' }, 30);
                 $j && $j->{op} eq 'joined' } @clients),
   scalar @clients, 'every connection joined');

my $chan = "collab:s:$sid";

sub numsub {
    my $r = eval {
        Collab::RedisTiny::cmd($rport, 'PUBSUB', 'NUMSUB', $chan)
    };
    return ref $r eq 'ARRAY' ? $r->[1] : -1;
}

sub wait_numsub {
    my ($want, $timeout) = @_;
    my $end = time + $timeout;
    my $n;
    while (1) {
        $n = numsub();
        return $n if $n == $want || time > $end;
        sleep 0.05;
    }
}

is(wait_numsub(4, 10), 4, 'one subscriber per worker');

# --- traffic ----------------------------------------------------------------

my @senders = map { $by_worker{$_}[0] } @all_workers;
my $lone = $by_worker{ $workers{b}[0] }[1];
my (%sent, %acks, %errors, %events, %ackseq);

sub collect {
    for my $c (@clients) {
        my $u = $c->user;
        for my $m (@{ $c->{inbox} }) {
            if ($m->{op} eq 'ack') {
                $acks{$u}++;
                $ackseq{ $m->{clientMsgId} } = $m->{seq};
            } elsif ($m->{op} eq 'error') {
                $errors{$u}++;
                diag("$u: error $m->{code}: $m->{message}")
                    if $errors{$u} < 3;
            } elsif ($m->{op} eq 'message') {
                push @{ $events{$u} }, $m;
            }
        }
        @{ $c->{inbox} } = ();
    }
}

sub unanswered {
    my ($c) = @_;
    my $u = $c->user;
    return ($sent{$u} // 0) - ($acks{$u} // 0) - ($errors{$u} // 0);
}

# each of @who keeps up to 4 sends in flight for $secs seconds
sub traffic {
    my ($secs, @who) = @_;
    my $end = time + $secs;
    while (time < $end) {
        for my $c (@who) {
            next if unanswered($c) >= 4;
            my $u = $c->user;
            my $n = ++$sent{$u};
            $c->send({ op => 'send', session => $slug, body => "$u says $n",
                       clientMsgId => "$u-$n", ref => "s$n" });
        }
        Collab::Chat::pump(0.02, @clients);
        collect();
    }
}

sub settle {
    my ($timeout, @who) = @_;
    my $end = time + $timeout;
    while (time < $end && grep { unanswered($_) } @who) {
        Collab::Chat::pump(0.05, @clients);
        collect();
    }
}

traffic(1, @senders);

my $rpid = Collab::Test::_read_pid("$rdir/redis.pid");
ok($rpid && kill('KILL', $rpid), 'redis killed');
my $killed = time;
sleep 0.02 while Collab::Test::alive($rpid) && time - $killed < 5;

traffic(2.5, @senders);
settle(10, @senders);

# only one connection sends now: nothing shows the others a gap
my $before_lone = $dbh->selectrow_array(
    'SELECT last_seq FROM chat_sessions WHERE id = ?', undef, $sid);
traffic(1.5, $lone);
settle(10, $lone);
my $lone_last = $dbh->selectrow_array(
    'SELECT last_seq FROM chat_sessions WHERE id = ?', undef, $sid);
ok($lone_last > $before_lone, 'the lone sender stored messages');

# its own worker's connections get them with Redis still down
my @mates = @{ $by_worker{ $lone->pid } };
my $end = time + 10;
while (time < $end
       && grep { (($events{ $_->user } // [])->[-1]{seq} // 0) < $lone_last }
               @mates)
{
    Collab::Chat::pump(0.05, @clients);
    collect();
}
is(scalar(grep { (($events{ $_->user } // [])->[-1]{seq} // 0)
                 == $lone_last } @mates),
   scalar @mates, "the lone sender's worker delivered up to seq $lone_last"
   . ' while Redis was down');
is(numsub(), -1, 'Redis is still down');

# 5 s after the kill, Redis starts again on the same port, empty
while (time - $killed < 5) {
    Collab::Chat::pump(0.05, @clients);
    collect();
}
my $out = `redis-server --port $rport --bind 127.0.0.1 --dir $rdir \\
           --daemonize yes --pidfile $rdir/redis.pid \\
           --logfile $rdir/redis.log --save '' --appendonly no 2>&1`;
is($?, 0, 'redis started again on the same port') or diag($out);
my $up = 0;
for (1 .. 200) {
    my $pong = eval { Collab::RedisTiny::cmd($rport, 'PING') } // '';
    $up = 1, last if $pong eq 'PONG';
    sleep 0.05;
}
ok($up, 'redis answers PING again');

# no message is sent now: only the resync on reconnect brings the lone
# sender's messages to the other workers
$end = time + 20;
while (time < $end
       && grep { (($events{ $_->user } // [])->[-1]{seq} // 0) < $lone_last }
               @clients)
{
    Collab::Chat::pump(0.05, @clients);
    collect();
}
my @behind = grep { (($events{ $_->user } // [])->[-1]{seq} // 0)
                    < $lone_last } @clients;
is(scalar @behind, 0, "with Redis back and nothing sent, every connection"
   . " caught up to seq $lone_last (resync from PostgreSQL)")
    or diag(join ', ', map { $_->user . ' on ' . $_->pid . ': '
                             . (($events{ $_->user } // [])->[-1]{seq} // 0) }
                       @behind);

traffic(1, @senders);
settle(10, @senders);

my $rows = $dbh->selectall_arrayref(
    q{SELECT m.seq, u.external_id AS user, m.body, m.client_msg_id
      FROM chat_messages m JOIN users u ON u.id = m.user_id
      WHERE m.session_id = ? ORDER BY m.seq}, { Slice => {} }, $sid);
my $TOTAL = @$rows;
is_deeply([map { $_->{seq} } @$rows], [1 .. $TOTAL],
          "the table holds seqs 1..$TOTAL");

$end = time + 30;
while (time < $end
       && grep { @{ $events{ $_->user } // [] } < $TOTAL } @clients)
{
    Collab::Chat::pump(0.05, @clients);
    collect();
}
Collab::Chat::pump(0.3, @clients);
collect();

my $nsent = 0;
$nsent += $_ for values %sent;
is(scalar(keys %errors), 0, 'no send was refused');
is(scalar(keys %ackseq), $nsent, "all $nsent sends acked");
is(scalar(grep { ($rows->[ $ackseq{$_} - 1 ]{client_msg_id} // '') ne $_ }
           keys %ackseq), 0, "every ack's seq is its row");
is($TOTAL, $nsent, 'one row per send');

my (%exact, %where_bad);
my $content_bad = 0;
for my $c (@clients) {
    my $u = $c->user;
    my @ev = @{ $events{$u} // [] };
    my @seqs = map { $_->{seq} } @ev;
    if (join(',', @seqs) eq join(',', 1 .. $TOTAL)) {
        $exact{$u} = 1;
    } else {
        my %n;
        $n{$_}++ for @seqs;
        my @missing = grep { !$n{$_} } 1 .. $TOTAL;
        my @twice = grep { $n{$_} > 1 } sort { $a <=> $b } keys %n;
        my $disorder = grep { $seqs[$_] <= $seqs[$_ - 1] } 1 .. $#seqs;
        $where_bad{ "$c->{inst}/" . $c->pid }++;
        diag(sprintf '%s (instance %s, worker %d): %d events, %d missing '
             . '(%s), %d twice (%s), %d out of order', $u, $c->{inst},
             $c->pid, scalar @seqs, scalar @missing,
             join(' ', grep defined, @missing[0 .. 9]), scalar @twice,
             join(' ', grep defined, @twice[0 .. 9]), $disorder);
    }
    for my $e (@ev) {
        my $row = $rows->[ $e->{seq} - 1 ] // { seq => -1 };
        $content_bad++ unless $row->{seq} == $e->{seq}
                              && $e->{user} eq $row->{user}
                              && $e->{body} eq $row->{body}
                              && $e->{clientMsgId} eq $row->{client_msg_id};
    }
}
is(scalar keys %exact, scalar @clients,
   "every connection got seqs 1..$TOTAL exactly once, in order")
    or diag('bad on ', explain(\%where_bad));
is($content_bad, 0, "every event carries its row's content");
is(scalar(grep { $_->{eof} || defined $_->{close_code} } @clients), 0,
   'no connection was closed');

is(wait_numsub(4, 10), 4, 'every worker subscribed again');

for my $inst (qw(a b)) {
    my $log = $t->error_log($inst);
    for my $pid (@{ $workers{$inst} }) {
        ok($log =~ /\b$pid#\d+: collab: redis subscriber: connection lost/
           && $log =~ /\b$pid#\d+: collab: redis subscriber: connected again/,
           "instance $inst, worker $pid: redis loss and return logged");
    }
}

$_->close for @clients;
$dbh->disconnect;

done_testing();
