#!/usr/bin/perl
#
# 044-presence-mass-join.t: 500 users joining one session at once (a mass
# reconnect) must not cause an event storm (issue 4): each worker sends
# one "presence" diff per collab_presence_batch (100ms) at most, so an
# observer already in the session gets far fewer events than joins.  The
# counts are printed; the observer must see all 500 joins, in fewer than
# 100 events.  nginx with 2 workers.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;

my $N = 500;

my $t = Collab::Test->new;
$t->start_pg;

$t->start_nginx(<<'CONF', worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=8;
    collab_zone collab 8m;
    collab_presence_batch 100ms;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user $arg_user;
            collab_user_name $arg_name;
        }
    }
CONF

sub open_user {
    Collab::Chat->open($t, user => $_[0], name => $_[0], identity => 'query',
                       nontext => 'drop');
}

my $obs = open_user('observer');
my $r = $obs->req(op => 'create', title => 'crowd', isPublic => \1);
my $slug = $r->{session}{id};
ok($slug, 'session created') or BAIL_OUT('no session');
is($obs->join_session($slug)->{op}, 'joined', 'observer joined');

# connected (and their user rows made) first, then all joins at once
my @c = map { open_user("m$_") } 1 .. $N;
is($_->req(op => 'ping')->{op}, 'pong', 'ready') for $c[0], $c[-1];
Collab::Chat::settle(1, $obs, @c);
$obs->grab(sub { 1 });

my $t0 = time;
$_->send({ op => 'join', session => $slug, ref => 'j' }) for @c;

# what each joiner believes is present: its joined reply's list, then the
# presence events after it (a big session's list may be up to one batch
# old; the next event brings the rest)
my %view;
sub follow {
    my ($x) = @_;
    my $n = 0;
    for my $m ($x->grab(sub { 1 })) {
        my $v = $view{"$x"} //= {};
        if (($m->{ref} // '') eq 'j' && $m->{op} eq 'joined') {
            $n++;
            $v->{ $_->{user} } = 1 for @{ $m->{presence} // [] };
        } elsif ($m->{op} eq 'presence') {
            $v->{ $_->{user} } = 1 for @{ $m->{joins} };
            delete $v->{ $_->{user} } for @{ $m->{leaves} };
        }
    }
    return $n;
}

my %seen;
my ($events, $joined) = (0, 0);
my $end = time + 60;
while (time < $end && (keys(%seen) < $N || $joined < $N)) {
    Collab::Chat::pump(0.1, $obs, @c);
    for my $ev ($obs->grab(\&Collab::Chat::is_presence)) {
        $events++;
        $seen{ $_->{user} }++ for @{ $ev->{joins} };
    }
    $joined += follow($_) for @c;
}
my $secs = time - $t0;
# a last batch or two
Collab::Chat::settle(0.5, $obs, @c);
for my $ev ($obs->grab(\&Collab::Chat::is_presence)) {
    $events++;
    $seen{ $_->{user} }++ for @{ $ev->{joins} };
}
$joined += follow($_) for @c;

my $users = grep { /^m\d+$/ } keys %seen;
diag(sprintf '%d joins in %.1fs reached the observer in %d presence '
     . 'events', $users, $secs, $events);
is($joined, $N, "$N joined replies");
is($users, $N, "the observer saw all $N users join");
is(scalar(grep { $seen{$_} > 1 } keys %seen), 0, 'each of them once');
ok($events < 100, "in $events events: coalesced (< 100, for $N joins)");
ok($events >= 1, 'in at least one');

my @short = grep { keys %{ $view{"$_"} // {} } != $N + 1 } @c;
is(scalar @short, 0,
   'every joiner\'s list plus the events after it holds all ' . ($N + 1))
    or diag('e.g. ' . scalar(keys %{ $view{"$short[0]"} // {} }) . ' users');

my $late = open_user('late');
my $j = $late->join_session($slug);
is(scalar @{ $j->{presence} // [] }, $N + 2,
   'a newcomer\'s snapshot has all ' . ($N + 2));

done_testing();
