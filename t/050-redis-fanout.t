#!/usr/bin/perl
#
# 050-redis-fanout.t: the Redis relay makes 2 nginx instances x 2 workers
# behave as one server (issue 5: "every message reaches every connection
# exactly once and in seq order").
#
# Two instances share one PostgreSQL and one Redis, each with
# worker_processes 2 and "listen ... reuseport" so the kernel spreads
# connections over both workers.  Each connection first asks GET /pid on
# the same keep-alive TCP connection ($pid of the worker serving it) and
# then upgrades: the test knows the worker of every connection and opens
# connections until each of the four workers holds 6 (24 in all).  All
# join one session; 2 connections per worker send 40 messages each,
# pipelined, all at once.  Then every connection must have received every
# message of chat_messages exactly once, in seq order, with the table's
# author, body and clientMsgId, and the same event on every connection;
# while they are joined Redis reports the session channel with one
# subscriber per worker (PUBSUB NUMSUB = 4).
#
# Why: without the relay a message reaches only its sender's worker; this
# is the relay's reason to exist.  Presence across instances is not part
# of the relay yet (presence is per host, through collab_zone) and is not
# tested here.

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
is(scalar(map { @$_ } values %workers), 4, 'four workers in two instances');

my $dbh = $t->pg_dbh;

# --- clients on every worker -------------------------------------------------

my $PER_WORKER = 6;

# opens connections to $inst until each of its workers serves $PER_WORKER
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
is(scalar @clients, 4 * $PER_WORKER, '24 connections');

my %by_worker;
push @{ $by_worker{ $_->pid } }, $_ for @clients;
my $placed = 0;
for my $inst (qw(a b)) {
    for my $pid (@{ $workers{$inst} }) {
        $placed++ if @{ $by_worker{$pid} // [] } == $PER_WORKER;
    }
}
is($placed, 4, "$PER_WORKER connections on each of the four workers")
    or diag(explain({ map { $_ => scalar @{ $by_worker{$_} } }
                      keys %by_worker }), explain(\%workers));

my $owner = Collab::Chat->open($t, user => 'owner', port => $port{a},
                                nontext => 'drop');
my $r = $owner->req(op => 'create', title => 'relay', isPublic => \1);
my $slug = $r->{session}{id};
my $sid = $dbh->selectrow_array(
    'SELECT id FROM chat_sessions WHERE slug = ?', undef, $slug);
ok($sid, 'session created');
$owner->close;

$_->send({ op => 'join', session => $slug, ref => 'join' }) for @clients;
my $joined = 0;
for my $c (@clients) {
    my $j = $c->take(sub { ($_->{ref} // '') eq 'join' }, 30);
    $joined++ if $j && $j->{op} eq 'joined';
}
is($joined, scalar @clients, 'every connection joined');

# every worker has a connection in the session: 4 subscribers
my $chan = "collab:s:$sid";
my $numsub;
for (1 .. 100) {
    $numsub = Collab::RedisTiny::cmd($t->redis_port, 'PUBSUB', 'NUMSUB',
                                     $chan);
    last if ($numsub->[1] // 0) == 4;
    sleep 0.05;
}
is($numsub->[1], 4, "$chan has one subscriber per worker");

# --- traffic ---------------------------------------------------------------

my @senders = map { @$_[0, 1] } values %by_worker;
my $MSGS = 40;
my $WINDOW = 16;
my $LAST = 20;
my $TOTAL = @senders * $MSGS + $LAST;

my (%sent, %acks, %errors, %events);

sub collect {
    for my $c (@clients) {
        my $u = $c->user;
        for my $m (@{ $c->{inbox} }) {
            if ($m->{op} eq 'ack') {
                $acks{$u}++;
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

my $end = time + 60;
while (time < $end) {
    for my $c (@senders) {
        my $u = $c->user;
        my $n = $sent{$u} // 0;
        while ($n < $MSGS && $n - ($acks{$u} // 0) - ($errors{$u} // 0)
                             < $WINDOW)
        {
            $n++;
            $c->send({ op => 'send', session => $slug, body => "$u says $n",
                       clientMsgId => "$u-$n", ref => "s$n" });
        }
        $sent{$u} = $n;
    }
    Collab::Chat::pump(0.05, @clients);
    collect();
    last unless grep { ($acks{ $_->user } // 0) + ($errors{ $_->user } // 0)
                       < $MSGS } @senders;
}

# (every connection has the first part before the second starts)
my $FIRST = $TOTAL - $LAST;
while (time < $end
       && grep { @{ $events{ $_->user } // [] } < $FIRST } @clients)
{
    Collab::Chat::pump(0.05, @clients);
    collect();
}

# then one connection alone sends, one message at a time: the other
# workers learn of these only through Redis (with senders on every worker,
# a worker would also see the gaps in its own seqs and read them from
# PostgreSQL)
my $last = $by_worker{ $workers{b}[1] }[2];
my $lu = $last->user;
for my $k (1 .. $LAST) {
    $last->send({ op => 'send', session => $slug, body => "$lu last $k",
                  clientMsgId => "$lu-last-$k", ref => "l$k" });
    my $n = ($acks{$lu} // 0) + ($errors{$lu} // 0);
    while (time < $end && ($acks{$lu} // 0) + ($errors{$lu} // 0) == $n) {
        Collab::Chat::pump(0.05, @clients);
        collect();
    }
}
is($acks{$lu}, $LAST, "the lone sender got $LAST acks");

while (time < $end
       && grep { @{ $events{ $_->user } // [] } < $TOTAL } @clients)
{
    Collab::Chat::pump(0.05, @clients);
    collect();
}
Collab::Chat::pump(0.2, @clients);
collect();

is(scalar(keys %errors), 0, 'no send was refused');
is(scalar(grep { ($acks{ $_->user } // 0) == $MSGS } @senders),
   scalar @senders, "every sender got $MSGS acks");

my $rows = $dbh->selectall_arrayref(
    q{SELECT m.seq, u.external_id AS user, m.body, m.client_msg_id
      FROM chat_messages m JOIN users u ON u.id = m.user_id
      WHERE m.session_id = ? ORDER BY m.seq}, { Slice => {} }, $sid);
is_deeply([map { $_->{seq} } @$rows], [1 .. $TOTAL],
          "the table holds seqs 1..$TOTAL");

# every connection: every seq once, in order, with the row's content
my (%exact, %content, %where_bad);
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
    my $ok = 1;
    for my $e (@ev) {
        my $row = $rows->[ $e->{seq} - 1 ] // { seq => -1 };
        $ok = 0 unless $row->{seq} == $e->{seq}
                       && $e->{user} eq $row->{user}
                       && $e->{body} eq $row->{body}
                       && $e->{clientMsgId} eq $row->{client_msg_id}
                       && $e->{session} eq $slug
                       && $e->{kind} eq 'user';
    }
    $content{$u} = 1 if $ok && @ev;
}
is(scalar keys %exact, scalar @clients,
   "every connection got seqs 1..$TOTAL exactly once, in order")
    or diag('bad on ', explain(\%where_bad));
is(scalar keys %content, scalar @clients,
   "every event carries its row's author, body and clientMsgId");

# the same event (all fields) on every connection, whichever path it took
my $differ = 0;
my $first = $events{ $clients[0]->user } // [];
for my $c (@clients[1 .. $#clients]) {
    my $ev = $events{ $c->user } // [];
    for my $i (0 .. $#$ev) {
        my $ref = $first->[$i] // next;
        next unless $ref->{seq} == $ev->[$i]{seq};
        $differ++ unless encode_json($ref) eq encode_json($ev->[$i]);
    }
}
is($differ, 0, 'every connection got the same event for each seq');

# all leave: no channel is left subscribed
$_->close for @clients;
my $chans;
for (1 .. 100) {
    $chans = Collab::RedisTiny::cmd($t->redis_port, 'PUBSUB', 'CHANNELS',
                                    'collab:s:*');
    last unless @$chans;
    sleep 0.05;
}
is_deeply($chans, [], 'no channel subscribed once every client left');

$dbh->disconnect;

done_testing();
