#!/usr/bin/perl
#
# 041-presence-grace.t: what presence does by the clock, and across a
# reload (issue 4), on nginx with 2 workers:
#
#   - typing expires by itself after collab_typing_timeout (1s here): the
#     others get {on: false} though the typer never sent it;
#   - a user who disconnects and reconnects within collab_presence_grace
#     (4s here) causes no leave and no new join (no offline/online
#     flicker); one who stays away goes offline (a "leaves" item with
#     status offline) once the grace has passed, and activeUsers drops;
#   - "nginx -s reload" keeps the zone: the clients get 1012 and
#     reconnect, the observer's new snapshot still has both a user who
#     reconnected and one who did not (still in his grace), the first gets
#     no leave, the second gets his leave when his grace ends.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;

my $GRACE = 4;

my $t = Collab::Test->new;
$t->start_pg;

$t->start_nginx(<<"CONF", worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=4;
    collab_zone collab 8m;
    collab_presence_timeout 60s;
    collab_presence_grace ${GRACE}s;
    collab_typing_timeout 1s;
    collab_presence_batch 100ms;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user \$arg_user;
            collab_user_name \$arg_name;
        }
    }
CONF

sub open_user {
    Collab::Chat->open($t, user => $_[0], name => $_[1] // ucfirst $_[0],
                       identity => 'query', nontext => 'drop');
}

sub joined {
    my ($c, $slug) = @_;
    my $j = $c->join_session($slug);
    is($j->{op}, 'joined', $c->user . ' joined');
    return { map { $_->{user} => $_ } @{ $j->{presence} // [] } };
}

sub active {
    my ($c, $slug) = @_;
    my $r = $c->req(op => 'sessions');
    my ($s) = grep { $_->{id} eq $slug } @{ $r->{sessions} // [] };
    return $s ? $s->{activeUsers} : undef;
}

my $obs = open_user('obs');
my $r = $obs->req(op => 'create', title => 'grace', isPublic => \1);
my $slug = $r->{session}{id};
ok($slug, 'session created') or BAIL_OUT('no session');
joined($obs, $slug);

# --- typing expires by itself -----------------------------------------------

my $ty = open_user('ty');
joined($ty, $slug);
ok($obs->wait_presence('joins', 'ty'), 'obs sees ty join');

is($ty->quiet(op => 'typing', session => $slug, on => \1), undef,
   'ty types (and never says he stopped)');
ok($obs->wait_typing('ty', 1), 'obs: ty typing');
ok($obs->wait_typing('ty', 0, 15), 'obs: ty not typing, by expiry alone');
my $p = joined(open_user('ty2'), $slug);
ok($p->{ty} && defined $p->{ty}{typing} && !$p->{ty}{typing},
   "a newcomer's snapshot: ty not typing");


# --- reconnect within the grace: nothing --------------------------------------

my $ada = open_user('ada');
joined($ada, $slug);
ok($obs->wait_presence('joins', 'ada'), 'obs sees ada join');
Collab::Chat::settle(0.5, $obs);
$obs->grab(\&Collab::Chat::is_presence);

$ada->close;                            # abrupt: no close frame
$ada = open_user('ada');
$p = joined($ada, $slug);
is($p->{ada} && $p->{ada}{status}, 'online', 'ada back, online');
Collab::Chat::settle($GRACE + 2, $obs, $ada);
is_deeply([map { $_->[0] } $obs->presence_about('ada')], [],
          'reconnected within the grace: no leave, no join for ada');

# same with a closing handshake, and a second time
for my $code (1000, 1001) {
    $ada->ws_close($code);
    sleep 0.3;
    $ada = open_user('ada');
    joined($ada, $slug);
}
Collab::Chat::settle($GRACE + 2, $obs, $ada);
is_deeply([map { $_->[0] } $obs->presence_about('ada')], [],
          'closed with 1000 then 1001, back each time: still nothing');

# --- disconnect beyond the grace: offline -------------------------------------

my $before = active($obs, $slug);
ok($before, "activeUsers $before before ada goes");

$obs->grab(sub { 1 });
$ty->close;
$ada->ws_close(1000);
my $t0 = time;
my $gone = $obs->wait_all('leaves', ['ada', 'ty'], $GRACE + 10);
my $item = $gone->{ada};
ok($item, 'ada gone beyond the grace: a leave');
is($item && $item->{status}, 'offline', 'status offline');
ok($item && $item->{lastSeen}, 'with lastSeen');
note(sprintf 'leave seen %.1fs after the close (grace %ds)',
     time - $t0, $GRACE);
ok($gone->{ty}, 'ty gone too');
is(active($obs, $slug), $before - 2, 'activeUsers dropped by 2');
$p = joined(open_user('late'), $slug);
ok(!$p->{ada} && !$p->{ty}, "a newcomer's snapshot has neither");

# --- reload keeps presence ----------------------------------------------------

my $kim = open_user('kim');              # reconnects after the reload
my $leo = open_user('leo');              # does not
joined($kim, $slug);
joined($leo, $slug);
ok($obs->wait_presence('joins', 'leo'), 'obs sees leo');
Collab::Chat::settle(0.5, $obs);

my @old = $t->nginx_worker_pids;
$t->reload_nginx(wait => 0);

# the old workers say 1012 to everyone
my $end = time + 20;
Collab::Chat::pump(0.2, $obs, $kim, $leo)
    while time < $end && grep { !$_->{eof} } $obs, $kim, $leo;
is($_->{close_code}, 1012, $_->user . ' got 1012') for $obs, $kim, $leo;
my @obs_before = $obs->presence_about('kim');
$leo->close;

$obs = open_user('obs');
$kim = open_user('kim');
$p = joined($obs, $slug);
joined($kim, $slug);
ok($p->{kim}, "obs's new snapshot has kim");
ok($p->{leo}, 'and leo, gone but within his grace: the zone survived');
ok(!grep({ $_->[0] eq 'leaves' } @obs_before), 'no leave of kim before');

$item = $obs->wait_presence('leaves', 'leo', undef, $GRACE + 15);
ok($item, 'leo gets his leave when the grace ends');
Collab::Chat::settle(1, $obs, $kim);
is_deeply([grep { $_->[0] ne 'joins' } $obs->presence_about('kim')], [],
          'kim (back within the grace): no leave, no update');
ok(!grep({ $_ == $old[0] || $_ == $old[1] } $t->nginx_worker_pids),
   'the old workers are gone');

done_testing();
