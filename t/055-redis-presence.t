#!/usr/bin/perl
#
# 055-redis-presence.t: presence and typing across nginx instances through
# Redis (issue 5: "presence and typing cross instances"; "an instance
# killed with kill -9 -> its users go offline on the other within the
# timeout").
#
# Two nginx instances (2 workers each) share one PostgreSQL and one Redis;
# each has its own collab_zone (separate shared memory): what one knows of
# the other's users comes only through Redis ("P" presence messages on the
# session's channel, "S" sync requests, "H" heartbeats on collab:hosts).
#
#   - alice joins a public session on A; bob joins it on B: bob learns of
#     alice (B asked A with "S" when it subscribed) in his "joined"
#     snapshot or in a presence event right after it, and alice gets a
#     presence event joining bob;
#   - bob goes away: alice sees the update;
#   - bob types: alice gets typing on, then off once collab_typing_timeout
#     (2s) has passed, bob never sending on: false;
#   - bob's message reaches alice exactly once;
#   - bob disconnects: alice gets his leave (after collab_presence_grace);
#   - carol joins on B, then instance B is killed with kill -9 (its whole
#     process group: master and workers, so no "P" offline is ever sent):
#     alice gets carol's leave once A has not heard of B for
#     collab_presence_timeout (3s; waited for up to 15s), and "sessions"
#     on A counts alice alone.
#
# No duration is asserted: waits are generous deadlines, timings are only
# noted.

use strict;
use warnings;

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

my $conf = <<'CONF';
    collab_postgres "%%PG_DSN%%" pool=4 timeout=30s;
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_zone collab 8m;
    collab_presence_timeout 3s;
    collab_presence_grace 1s;
    collab_typing_timeout 2s;
    collab_presence_batch 100ms;
    collab_rate_presence 100r/s burst=100;
    collab_rate_messages 100r/s burst=100;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user $arg_user;
            collab_user_name $arg_name;
        }
    }
CONF

(my $conf_b = $conf) =~ s/%%PORT%%/%%PORT2%%/;
$t->start_nginx($conf, name => 'a', worker_processes => 2);
$t->start_nginx($conf_b, name => 'b', worker_processes => 2);
my %port = (a => $t->port(1), b => $t->port(2));
is(scalar(() = $t->nginx_worker_pids('b')), 2, 'instance b has 2 workers');

# every worker of both instances listens for heartbeats
my $hosts = 'collab:hosts';
my $numsub;
for (1 .. 100) {
    $numsub = Collab::RedisTiny::cmd($t->redis_port, 'PUBSUB', 'NUMSUB',
                                     $hosts);
    last if ($numsub->[1] // 0) == 4;
    sleep 0.05;
}
is($numsub->[1], 4, "$hosts has one subscriber per worker (4)");

sub open_user {
    my ($inst, $user, $name) = @_;
    # the identity in the query string (collab_user $arg_user;
    # collab_user_name $arg_name); non-text frames dropped
    return Collab::Chat->open($t, user => $user, name => $name,
                              port => $port{$inst}, identity => 'query',
                              nontext => 'drop');
}

sub snapshot { map { $_->{user} => $_ } @{ $_[0]{presence} // [] } }

sub typing_events {
    my ($c, $user) = @_;
    return $c->grab(sub {
        ($_->{op} // '') eq 'typing' && ($_->{user} // '') eq $user
    });
}

my $alice = open_user('a', 'alice', 'Alice');
my $r = $alice->req(op => 'create', title => 'hosts', isPublic => \1);
my $slug = $r->{session}{id};
ok($slug, 'session created') or BAIL_OUT('no session: ' . explain($r));

my $j = $alice->join_session($slug);
is($j->{op}, 'joined', 'alice joined on a');
my %p = snapshot($j);
is_deeply([sort keys %p], ['alice'], "alice's snapshot: alice alone");

# --- a join on the other instance: sync and join event ----------------------

# b has heard nothing of alice before this join (no worker of b was in
# the session): her presence in the "joined" can only come from b's "S"
# and a's answer; when it is missing the diag shows whether she came as a
# join event right after (the reply was built before the answer arrived)
my $bob = open_user('b', 'bob', 'Bob');
$j = $bob->join_session($slug);
is($j->{op}, 'joined', 'bob joined on b');
%p = snapshot($j);
ok($p{bob}, "bob's snapshot on b has bob");

# The first join of a session on a host asks the others ("S") without
# waiting for their answer (docs/PROTOCOL.md): alice of a is in bob's
# snapshot, or comes as a presence join right after it.
unless ($p{alice}) {
    my $ev = $bob->wait_presence('joins', 'alice', undef, 10);
    $p{alice} = $ev if $ev;
    note('alice came as a join event after the snapshot') if $ev;
}
ok($p{alice}, "bob learns of alice of a (sync), in the snapshot or at once");
is($p{alice} && $p{alice}{status}, 'online', 'alice online');
is($p{alice} && $p{alice}{userName}, 'Alice', 'with her name');

my $item = $alice->wait_presence('joins', 'bob', undef, 10);
ok($item, 'alice gets a presence event joining bob of b');
is($item && $item->{status}, 'online', 'bob online');
is($item && $item->{userName}, 'Bob', 'with his name');
ok($item && defined $item->{typing} && !$item->{typing},
   'not typing');

# --- away -------------------------------------------------------------------

is($bob->quiet(op => 'presence', session => $slug, status => 'away'),
   undef, 'bob away: accepted');
$item = $alice->wait_presence('updates', 'bob', 'away', 10);
ok($item, 'alice sees bob away');
ok($item && $item->{lastSeen}, 'the update has lastSeen');

is($bob->quiet(op => 'presence', session => $slug, status => 'online'),
   undef, 'bob online again');
ok($alice->wait_presence('updates', 'bob', 'online', 10),
   'alice sees bob online');

# --- typing, ending by the timeout ------------------------------------------

Collab::Chat::settle(0.3, $alice, $bob);
$alice->grab(sub { 1 });

is($bob->quiet(op => 'typing', session => $slug, on => \1), undef,
   'bob types: accepted');
my $t_on = time;
my $ev = $alice->wait_typing('bob', 1, 10);
ok($ev, 'alice gets typing {user: bob, on: true}');
is($ev && $ev->{session}, $slug, 'for the session');

# bob sends nothing more: the indicator ends with collab_typing_timeout
$ev = $alice->wait_typing('bob', 0, 15);
ok($ev, 'alice gets typing {user: bob, on: false} without bob saying so');
note(sprintf 'typing off %.1fs after on was sent (typing timeout 2s)',
     time - $t_on) if $ev;
Collab::Chat::settle(0.5, $alice);
is(scalar(typing_events($alice, 'bob')), 0,
   'no other typing event about bob meanwhile');

# --- a message, once --------------------------------------------------------

$r = $bob->req(op => 'send', session => $slug, body => 'hi from b',
               clientMsgId => 'b1');
is($r->{op}, 'ack', 'bob sends on b');
my $m = $alice->take(sub {
    ($_->{op} // '') eq 'message' && ($_->{clientMsgId} // '') eq 'b1'
}, 10);
ok($m, 'alice gets the message');
is($m && $m->{user}, 'bob', 'from bob');
is($m && $m->{body}, 'hi from b', 'with its body');
is($m && $m->{seq}, $r->{seq}, "with the ack's seq") if defined $r->{seq};
Collab::Chat::settle(1, $alice, $bob);
is(scalar($alice->grab(sub { ($_->{op} // '') eq 'message' })), 0,
   'and only once');

# --- a disconnect: leave after the grace ------------------------------------

$alice->grab(sub { 1 });
my $t_close = time;
$bob->close;
$item = $alice->wait_presence('leaves', 'bob', undef, 15);
ok($item, 'bob disconnects: alice gets his leave');
is($item && $item->{status}, 'offline', 'offline');
note(sprintf 'leave %.1fs after the close (grace 1s)', time - $t_close)
    if $item;

# --- instance b killed ------------------------------------------------------

my $carol = open_user('b', 'carol', 'Carol');
is($carol->join_session($slug)->{op}, 'joined', 'carol joined on b');
ok($alice->wait_presence('joins', 'carol', undef, 10),
   'alice sees carol of b join');
$r = $alice->req(op => 'sessions');
my ($s) = grep { $_->{id} eq $slug } @{ $r->{sessions} // [] };
is($s && $s->{activeUsers}, 2, 'sessions on a: activeUsers 2 (alice, carol)');
Collab::Chat::settle(0.3, $alice, $carol);
$alice->grab(sub { 1 });

my $master = $t->nginx_master_pid('b');
my @workers_b = $t->nginx_worker_pids('b');
ok($master && @workers_b == 2, 'b: master and 2 workers');

# the daemon master leads its own process group, which its workers share
my @group = grep {
    my $st = Collab::Test::_read_file("/proc/$_/stat") // '';
    my ($pgrp) = $st =~ /^\d+ \(.*\) \S \d+ (\d+)/s;
    ($pgrp // 0) == $master
} $master, @workers_b;
is(scalar @group, 3, 'b: master and workers in one process group');

my $t_kill = time;
ok(kill('KILL', -$master), 'kill -9 of b (its process group)');
sleep 0.02 while grep({ Collab::Test::alive($_) } $master, @workers_b)
                 && time - $t_kill < 10;
is(scalar(grep { Collab::Test::alive($_) } $master, @workers_b), 0,
   'b: every process is gone');

# every presence event until carol's leave: alice must not leave in any
my (@after_kill, %left);
my $until = time + 15;
while (!$left{carol} && time < $until) {
    my $pev = $alice->take(\&Collab::Chat::is_presence, $until - time) or last;
    push @after_kill, $pev;
    %left = (%left, Collab::Chat::items($pev, 'leaves'));
}
$item = $left{carol};
ok($item, "alice gets carol's leave (b silent for the presence timeout)");
is($item && $item->{status}, 'offline', 'offline');
note(sprintf "carol's leave %.1fs after the kill (presence timeout 3s)",
     time - $t_kill) if $item;

$r = $alice->req(op => 'sessions');
($s) = grep { $_->{id} eq $slug } @{ $r->{sessions} // [] };
is($s && $s->{activeUsers}, 1, 'sessions on a: activeUsers 1 (alice)');

my $dan = open_user('a', 'dan', 'Dan');
$j = $dan->join_session($slug);
%p = snapshot($j);
is_deeply([sort keys %p], [qw(alice dan)],
          "a newcomer's snapshot on a: alice and dan, no ghost of b");

Collab::Chat::settle(0.5, $alice);
push @after_kill, $alice->grab(\&Collab::Chat::is_presence);
is_deeply([grep { $_->{user} eq 'alice' }
           map { @{ $_->{leaves} // [] }, @{ $_->{updates} // [] } }
           @after_kill], [], 'nothing changed for alice herself');

for (1 .. 100) {
    $numsub = Collab::RedisTiny::cmd($t->redis_port, 'PUBSUB', 'NUMSUB',
                                     $hosts);
    last if ($numsub->[1] // 0) == 2;
    sleep 0.05;
}
is($numsub->[1], 2, "$hosts: a's 2 workers are left");

$_->close for $alice, $carol, $dan;

done_testing();
