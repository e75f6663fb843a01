#!/usr/bin/perl
#
# 042-presence-kill.t: a worker killed with kill -9 leaves no ghost users
# (issue 4).  nginx with 2 workers (reuseport, so that connections spread);
# each connection's worker is found through /proc (the server socket whose
# peer is the client's port is among that worker's descriptors).  12
# users join one session, observers too; the worker holding the most users
# is killed with SIGKILL while an observer sits on the other one.  That
# observer must see every user of the dead worker leave (offline) within
# collab_presence_timeout (10s here, plus slack), and no other user leave;
# "sessions" must count only the living; a newcomer's snapshot must not
# have the dead ones (the zone holds no entry for them).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;

my $t = Collab::Test->new;
$t->start_pg;

# the master reports the killed worker at [alert]: expected here
$t->allow_log(qr/exited on signal 9/);

$t->start_nginx(<<'CONF', worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=4;
    collab_zone collab 8m;
    collab_presence_timeout 10s;
    collab_presence_grace 2s;
    collab_presence_batch 100ms;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location /chat {
            collab_websocket;
            collab_user $arg_user;
            collab_user_name $arg_name;
        }
    }
CONF

my @workers = $t->nginx_worker_pids;
is(scalar @workers, 2, 'two workers');

sub open_user {
    Collab::Chat->open($t, user => $_[0], name => ucfirst $_[0],
                       identity => 'query', nontext => 'drop');
}

my $owner = open_user('owner');
my $r = $owner->req(op => 'create', title => 'kill', isPublic => \1);
my $slug = $r->{session}{id};
ok($slug, 'session created') or BAIL_OUT('no session');
is($owner->join_session($slug)->{op}, 'joined', 'owner joined');

my (@users, %on);
for my $i (1 .. 12) {
    my $c = open_user("u$i");
    is($c->join_session($slug)->{op}, 'joined', "u$i joined");
    $c->{pid} = $c->worker(@workers);
    push @users, $c;
    push @{ $on{ $c->{pid} // '?' } }, $c->user;
}
$owner->{pid} = $owner->worker(@workers);
push @{ $on{ $owner->{pid} // '?' } }, 'owner';
note("worker $_: @{ $on{$_} }") for sort keys %on;
ok(!$on{'?'}, 'every connection was found on a worker');

# the victim: the worker with the most users; an observer on the other
my ($victim) = sort { @{ $on{$b} // [] } <=> @{ $on{$a} // [] } } @workers;
my ($survivor) = grep { $_ != $victim } @workers;
my $obs;
for my $i (1 .. 50) {
    my $c = open_user("obs$i");
    next unless ($c->worker(@workers) // 0) == $survivor;
    $obs = $c;
    last;
}
ok($obs, "an observer on the surviving worker $survivor")
    or BAIL_OUT('no observer on the other worker');
is($obs->join_session($slug)->{op}, 'joined', 'the observer joined');
my $obs_user = $obs->user;

my @dead = grep { ($_->{pid} // 0) == $victim } @users, $owner;
my @live = grep { ($_->{pid} // 0) != $victim } @users, $owner;
my @dead_names = map { $_->user } @dead;
my @live_names = map { $_->user } @live;
note("to die: @dead_names; to live: @live_names");
ok(@dead >= 1, scalar(@dead) . ' users on the victim');

my $active = sub {
    my $r = $obs->req(op => 'sessions');
    my ($s) = grep { $_->{id} eq $slug } @{ $r->{sessions} // [] };
    return $s ? $s->{activeUsers} : -1;
};

is($active->(), 14, 'activeUsers 14 before (owner, 12 users, observer)');
Collab::Chat::settle(1, $obs);
$obs->grab(\&Collab::Chat::is_presence);

kill 'KILL', $victim;
my $t0 = time;

my $gone = $obs->wait_all('leaves', \@dead_names, 25);
is_deeply([sort keys %$gone], [sort @dead_names],
          'the observer sees every user of the killed worker leave');
ok(!grep({ ($_->{status} // '') ne 'offline' } values %$gone),
   'each with status offline');
note(sprintf 'the last leave came %.1fs after the kill', time - $t0);

# the dead connections are dead (EOF), the living ones still answer
Collab::Chat::settle(0.5, @users, $owner);
is(scalar(grep { $_->{eof} } @dead), scalar @dead,
   "the killed worker's connections are closed");
is(scalar(grep { $_->req(op => 'ping')->{op} eq 'pong' } @live), scalar @live,
   "the other worker's connections still answer");

Collab::Chat::settle(1, $obs);
my @wrong = grep { my $u = $_; grep { $_->[0] eq 'leaves' }
                   $obs->presence_about($u) } @live_names;
is_deeply(\@wrong, [], 'no living user left');

is($active->(), 14 - @dead, 'activeUsers counts only the living: '
   . (14 - @dead));

my $late = open_user('late');
my $j = $late->join_session($slug);
my %p = map { $_->{user} => $_ } @{ $j->{presence} // [] };
is_deeply([grep { $p{$_} } @dead_names], [],
          "a newcomer's snapshot has none of the dead");
is_deeply([grep { !$p{$_} } @live_names, $obs_user], [],
          'and all of the living');

# the master started a new worker; it takes part
my $end = time + 10;
sleep 0.1 until grep({ $_ == $victim } $t->nginx_worker_pids) == 0
                && $t->nginx_worker_pids == 2 || time > $end;
is(scalar $t->nginx_worker_pids, 2, 'two workers again');

# a dead user reconnects: back online for the observer
my $back = open_user($dead_names[0]);
is($back->join_session($slug)->{op}, 'joined', "$dead_names[0] back");
ok($obs->wait_presence('joins', $dead_names[0]),
   'the observer sees the join');

done_testing();
