#!/usr/bin/perl
#
# 040-presence-basic.t: presence and typing in the collab_zone (issue 4),
# on one nginx with 2 workers, so that the users of a test may sit on
# either worker: the zone is what they share.
#
#   - "joined" carries the presence snapshot {user, userName, status,
#     lastSeen, typing}; the members already there get a "presence" event
#     whose "joins" has the newcomer;
#   - two tabs of one user are one presence: away only when both tabs are
#     away, online again as soon as one tab is;
#   - "typing" {on: true} reaches the other members as a "typing" event,
#     not the typer's own tabs; a "send" ends it (typing_timeout is 30s
#     here, so the "on: false" can only come from the send);
#   - "presence"/"typing" from a connection that did not join the session,
#     or for a private session the user may not join, are ACCESS_DENIED;
#     bad "status"/"on" are BAD_REQUEST; nothing of it reaches anyone.

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

$t->start_nginx(<<'CONF', worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=4;
    collab_zone collab 8m;
    collab_presence_timeout 60s;
    collab_presence_grace 1s;
    collab_typing_timeout 30s;
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

my @workers = $t->nginx_worker_pids;
is(scalar @workers, 2, 'two workers');

sub open_user {
    Collab::Chat->open($t, user => $_[0], name => $_[1], identity => 'query',
                       nontext => 'drop');
}

my $ann = open_user('ann', 'Ann');
my $r = $ann->req(op => 'create', title => 'presence', isPublic => \1);
my $slug = $r->{session}{id};
ok($slug, 'session created') or BAIL_OUT('no session');

# --- snapshot on join -------------------------------------------------------

my $t0 = time * 1000;
my $j = $ann->join_session($slug);
is($j->{op}, 'joined', 'ann joined');
my %p = map { $_->{user} => $_ } @{ $j->{presence} // [] };
ok($p{ann}, 'the snapshot has ann herself');
is($p{ann}{status}, 'online', 'online');
is($p{ann}{userName}, 'Ann', 'with her name');
ok(!$p{ann}{typing} && defined $p{ann}{typing}, 'typing: false');
ok(abs(($p{ann}{lastSeen} // 0) - $t0) < 60_000,
   'lastSeen is a time in ms since the epoch, about now');

my $bob = open_user('bob', 'Bob');
$j = $bob->join_session($slug);
is($j->{op}, 'joined', 'bob joined');
%p = map { $_->{user} => $_ } @{ $j->{presence} // [] };
is_deeply([sort keys %p], [qw(ann bob)], "bob's snapshot: ann and bob");
is($p{ann}{status}, 'online', 'ann online in it');
is($p{ann}{userName}, 'Ann', 'ann named in it');

my $item = $ann->wait_presence('joins', 'bob');
ok($item, 'ann gets a presence event joining bob');
is($item && $item->{status}, 'online', 'bob online');
is($item && $item->{userName}, 'Bob', 'with his name');
ok($item && exists $item->{typing} && exists $item->{lastSeen},
   'a join item has typing and lastSeen');

# --- two tabs of one user ---------------------------------------------------

# the tabs on different workers if we can get that (the kernel picks)
my $cat1 = open_user('cat', 'Cat');
my $w1 = $cat1->worker(@workers) // '';
my $cat2;
for (1 .. 20) {
    $cat2 = open_user('cat', 'Cat');
    last if ($cat2->worker(@workers) // '') ne $w1;
}
is($cat1->join_session($slug)->{op}, 'joined', 'cat tab 1 joined');
is($cat2->join_session($slug)->{op}, 'joined', 'cat tab 2 joined');
my @w = map { $_->worker(@workers) // '?' } $cat1, $cat2;
note("cat's tabs are on workers @w");

ok($ann->wait_presence('joins', 'cat'), 'ann sees cat join');
Collab::Chat::settle(0.5, $ann, $bob, $cat1, $cat2);
is(scalar(grep { $_->[0] eq 'joins' } $ann->presence_about('cat')), 0,
   'one join for cat, not one per tab');
$ann->grab(\&Collab::Chat::is_presence);

is($cat1->quiet(op => 'presence', session => $slug, status => 'away'),
   undef, 'tab 1 away: accepted, no reply');
Collab::Chat::settle(1, $ann, $bob, $cat1, $cat2);
is_deeply([$ann->presence_about('cat')], [],
          'one tab away, the other online: no change seen');

is($cat2->quiet(op => 'presence', session => $slug, status => 'away'),
   undef, 'tab 2 away');
$item = $ann->wait_presence('updates', 'cat', 'away');
ok($item, 'both tabs away: ann sees cat away');
ok($item && $item->{lastSeen}, 'the update has lastSeen');
ok($bob->wait_presence('updates', 'cat', 'away'), 'so does bob');

my $dan = open_user('dan', 'Dan');
$j = $dan->join_session($slug);
%p = map { $_->{user} => $_ } @{ $j->{presence} // [] };
is($p{cat} && $p{cat}{status}, 'away', "a newcomer's snapshot: cat away");

is($cat1->quiet(op => 'presence', session => $slug, status => 'online'),
   undef, 'tab 1 online again');
ok($ann->wait_presence('updates', 'cat', 'online'),
   'one tab online: cat online');

# a tab closing while the other stays: no leave, no change
$cat2->close;
Collab::Chat::settle(2, $ann, $bob, $cat1, $dan);
is_deeply([map { $_->[0] } $ann->presence_about('cat')], [],
          'one tab of two closed (grace 1s passed): cat stays, no event');
$ann->grab(\&Collab::Chat::is_presence);

# --- typing -----------------------------------------------------------------

$cat2 = open_user('cat', 'Cat');
is($cat2->join_session($slug)->{op}, 'joined', 'cat tab 2 back');

is($cat1->quiet(op => 'typing', session => $slug, on => \1), undef,
   'cat types in tab 1: accepted, no reply');
my $ev = $ann->wait_typing('cat', 1);
ok($ev, 'ann gets typing {user: cat, on: true}');
is($ev && $ev->{session}, $slug, 'for the session');
ok($bob->wait_typing('cat', 1), 'bob too');

my $eve = open_user('eve', 'Eve');
$j = $eve->join_session($slug);
%p = map { $_->{user} => $_ } @{ $j->{presence} // [] };
ok($p{cat} && $p{cat}{typing}, "a newcomer's snapshot: cat typing");

Collab::Chat::settle(0.5, $cat1, $cat2);
is(scalar($cat1->grab(sub { ($_->{op} // '') eq 'typing' })), 0,
   "the typer's tab gets no typing event about itself");
is(scalar($cat2->grab(sub { ($_->{op} // '') eq 'typing' })), 0,
   "nor does the typer's other tab");

# a refresh is not news
is($cat1->quiet(op => 'typing', session => $slug, on => \1), undef,
   'typing refreshed');
Collab::Chat::settle(0.5, $ann);
is(scalar($ann->grab(sub { ($_->{op} // '') eq 'typing' })), 0,
   'a refresh sends no new event');

# sending ends typing (typing_timeout is 30s: only the send can do it)
$r = $cat1->req(op => 'send', session => $slug, body => 'hello',
                clientMsgId => 'c1');
is($r->{op}, 'ack', 'cat sends');
ok($ann->wait_typing('cat', 0, 10), 'the send ends typing: on: false');

# typing on, then off explicitly
is($bob->quiet(op => 'typing', session => $slug, on => \1), undef,
   'bob types');
ok($ann->wait_typing('bob', 1), 'ann sees bob typing');
is($bob->quiet(op => 'typing', session => $slug, on => \0), undef,
   'bob stops');
ok($ann->wait_typing('bob', 0), 'ann sees bob stop');

# stopped and started again within one batch (a send, then the next
# keystroke): clients clear the indicator on the message, so the new
# start must be heard even though "typing" looks unchanged at the tick
is($bob->quiet(op => 'typing', session => $slug, on => \1), undef,
   'bob types again');
ok($ann->wait_typing('bob', 1), 'ann sees bob typing');
Collab::Chat::settle(0.3, $ann);
$ann->grab(sub { ($_->{op} // '') eq 'typing' });
$bob->send({ op => 'typing', session => $slug, on => \0 });
is($bob->quiet(op => 'typing', session => $slug, on => \1), undef,
   'bob stops and starts at once');
ok($ann->wait_typing('bob', 1, 3),
   'ann hears "typing on" again for the new start');
is($bob->quiet(op => 'typing', session => $slug, on => \0), undef,
   'bob stops');
ok($ann->wait_typing('bob', 0), 'ann sees bob stop');

# a typer who disconnects stops typing (long before typing_timeout)
my $gus = open_user('gus', 'Gus');
is($gus->join_session($slug)->{op}, 'joined', 'gus joined');
is($gus->quiet(op => 'typing', session => $slug, on => \1), undef,
   'gus types');
ok($ann->wait_typing('gus', 1), 'ann sees gus typing');
$gus->close;
ok($ann->wait_typing('gus', 0, 10), 'gus disconnects: typing off');
ok($ann->wait_presence('leaves', 'gus', undef, 10), 'and gus leaves');

# --- denied and bad requests ------------------------------------------------

my $fay = open_user('fay', 'Fay');
for my $op ([presence => status => 'away'], [typing => on => \1]) {
    $r = $fay->req(op => $op->[0], session => $slug, $op->[1] => $op->[2]);
    is($r->{code}, 'ACCESS_DENIED', "$op->[0] without a join: ACCESS_DENIED");
}

# joined on another connection is not joined on this one
my $ann2 = open_user('ann', 'Ann');
$r = $ann2->req(op => 'typing', session => $slug, on => \1);
is($r->{code}, 'ACCESS_DENIED',
   'typing on a connection of a member that did not join: ACCESS_DENIED');

# a private session: a stranger cannot join, so cannot read presence
$r = $ann->req(op => 'create', title => 'secret', isPublic => \0);
my $secret = $r->{session}{id};
ok($secret, 'private session created');
$r = $fay->join_session($secret);
is($r->{code}, 'ACCESS_DENIED', 'a stranger joining it: ACCESS_DENIED');
ok(!exists $r->{presence}, 'with no presence in the answer');
$r = $fay->req(op => 'presence', session => $secret, status => 'online');
is($r->{code}, 'ACCESS_DENIED', 'presence on it: ACCESS_DENIED');
$r = $fay->req(op => 'typing', session => $secret, on => \1);
is($r->{code}, 'ACCESS_DENIED', 'typing on it: ACCESS_DENIED');

is($fay->join_session($slug)->{op}, 'joined', 'fay joins the public one');
for my $bad ([status => 'offline'], [status => 'busy'], [status => 1],
             [on => 'yes'], [on => 1])
{
    my $op = $bad->[0] eq 'status' ? 'presence' : 'typing';
    $r = $fay->req(op => $op, session => $slug, @$bad);
    is($r->{code}, 'BAD_REQUEST', "$op with $bad->[0] $bad->[1]: BAD_REQUEST");
}
$r = $fay->req(op => 'typing', session => 'nope', on => \1);
ok($r->{code} && $r->{code} =~ /^(?:BAD_REQUEST|ACCESS_DENIED)$/,
   "typing on a session id that does not exist: $r->{code}");

Collab::Chat::settle(1, $ann, $bob);
is(scalar($ann->grab(sub { ($_->{op} // '') eq 'typing' })), 0,
   'none of the refused requests made a typing event');
is_deeply([grep { $_->[0] eq 'updates' } $ann->presence_about('fay')], [],
          'nor a presence update');

# --- activeUsers ------------------------------------------------------------

$r = $ann->req(op => 'sessions');
my ($s) = grep { $_->{id} eq $slug } @{ $r->{sessions} // [] };
is($s && $s->{activeUsers}, 6,
   'sessions: activeUsers 6 (ann, bob, cat, dan, eve, fay)');

is_deeply([$t->nginx_worker_pids], \@workers, 'no worker died');

done_testing();
