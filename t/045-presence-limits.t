#!/usr/bin/perl
#
# 045-presence-limits.t: rate limits kept in the zone per user (issue 4),
# and presence without a zone.
#
#   - collab_rate_presence 1r/m burst=1 (as limit_req: burst + 1 in a
#     row): a user's third presence/typing request in a row is RATE_LIMITED with retryAfter (ms), and nothing
#     of it is applied (no typing event, no status change for others);
#     the bucket is the user's, not the connection's: a second tab is
#     limited too, while another user is not;
#   - collab_rate_messages 1r/m burst=1: the third send is RATE_LIMITED
#     with retryAfter, no row is written, no ack comes;
#   - collab_rate_presence 5r/s burst=0 (no burst, as in limit_req): a
#     user's first request goes through, a second one right after it is
#     limited;
#   - without collab_zone: join works with an empty presence list, and
#     presence/typing are UNAVAILABLE.

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

my $conf = <<'CONF';
    collab_postgres "%%PG_DSN%%" pool=4;
    %%ZONE%%
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

sub conf {
    my ($port, $zone) = @_;
    (my $c = $conf) =~ s/%%PORT%%/%%PORT$port%%/;
    $c =~ s/%%ZONE%%/$zone/;
    return $c;
}

$t->start_nginx(conf(1, 'collab_zone collab 1m;
    collab_rate_presence 1r/m burst=1;
    collab_rate_messages 1r/m burst=1;'), name => 'rl', worker_processes => 2);
$t->start_nginx(conf(2, 'collab_zone collab 1m;
    collab_rate_presence 5r/s burst=0;'), name => 'b0');
$t->start_nginx(conf(3, ''), name => 'nozone');

sub open_user {
    my ($port, $user) = @_;
    return Collab::Chat->open($t, user => $user, name => ucfirst $user,
                              port => $t->port($port), identity => 'query',
                              nontext => 'drop');
}

sub session {
    my ($c) = @_;
    my $r = $c->req(op => 'create', title => 'limits', isPublic => \1);
    my $slug = $r->{session}{id} or BAIL_OUT('no session');
    is($c->join_session($slug)->{op}, 'joined', $c->user . ' joined');
    return $slug;
}

# --- presence and typing ------------------------------------------------------

my $obs = open_user(1, 'obs');
my $slug = session($obs);
my $pat = open_user(1, 'pat');
my $pat2 = open_user(1, 'pat');
is($pat->join_session($slug)->{op}, 'joined', 'pat joined');
is($pat2->join_session($slug)->{op}, 'joined', 'pat joined in tab 2');
ok($obs->wait_presence('joins', 'pat'), 'obs sees pat');

is($pat->quiet(op => 'presence', session => $slug, status => 'away'), undef,
   'request 1 (presence away in tab 1) accepted');
is($pat2->quiet(op => 'presence', session => $slug, status => 'away'), undef,
   'request 2 (presence away in tab 2) accepted');
ok($obs->wait_presence('updates', 'pat', 'away'), 'obs sees pat away');
Collab::Chat::settle(0.5, $obs);
$obs->grab(sub { 1 });

my $e = $pat->quiet(op => 'typing', session => $slug, on => \1);
is($e && $e->{code}, 'RATE_LIMITED', 'request 3 (typing): RATE_LIMITED');
ok($e && ($e->{retryAfter} // 0) > 0, 'with retryAfter > 0: '
   . ($e && $e->{retryAfter} // 'none'));
# 1r/m is kept as 16 per 1000s (as limit_req does): about 62.5s
ok($e && ($e->{retryAfter} // 0) <= 65_000,
   'about a minute at most (1r/m)');

$e = $pat2->quiet(op => 'presence', session => $slug, status => 'online');
is($e && $e->{code}, 'RATE_LIMITED',
   'presence online in the other tab: RATE_LIMITED (the bucket is the '
   . "user's)");
Collab::Chat::settle(1.5, $obs);
is(scalar($obs->grab(sub { ($_->{op} // '') eq 'typing' })), 0,
   'no typing event for the refused typing');
is_deeply([$obs->presence_about('pat')], [],
          'no presence update for the refused status');
my $j = open_user(1, 'new')->join_session($slug);
my %p = map { $_->{user} => $_ } @{ $j->{presence} // [] };
is($p{pat} && $p{pat}{status}, 'away', 'pat still away in a snapshot');
ok($p{pat} && !$p{pat}{typing}, 'and not typing');

my $ona = open_user(1, 'ona');
is($ona->join_session($slug)->{op}, 'joined', 'ona joined');
is($ona->quiet(op => 'typing', session => $slug, on => \1), undef,
   'another user is not limited');
ok($obs->wait_typing('ona', 1), 'her typing goes out');

# --- messages -----------------------------------------------------------------

my $dbh = $t->pg_dbh;
my @acks;
for my $n (1 .. 3) {
    push @acks, $ona->req(op => 'send', session => $slug, body => "m$n",
                          clientMsgId => "ona-$n");
}
is_deeply([map { $_->{op} } @acks[0, 1]], [qw(ack ack)],
          'sends 1 and 2 acked');
is($acks[2]{code}, 'RATE_LIMITED', 'send 3: RATE_LIMITED');
ok(($acks[2]{retryAfter} // 0) > 0, 'with retryAfter > 0');
my ($rows) = $dbh->selectrow_array(
    "SELECT count(*) FROM chat_messages m JOIN chat_sessions s"
    . " ON s.id = m.session_id WHERE s.slug = ?", undef, $slug);
is($rows, 2, 'two rows, the refused message is not stored');
Collab::Chat::settle(1, $ona);
is(scalar($ona->grab(sub { ($_->{op} // '') eq 'ack' })), 0,
   'no late ack for it');

# --- burst=0 --------------------------------------------------------------------

my $zed = open_user(2, 'zed');
my $s0 = session($zed);
$e = $zed->quiet(op => 'typing', session => $s0, on => \1);
is($e, undef, "burst=0: a user's very first request goes through")
    or diag(explain($e));
$e = $zed->quiet(op => 'typing', session => $s0, on => \0);
is($e && $e->{code}, 'RATE_LIMITED', 'burst=0: a second one at once does not')
    or diag(explain($e));
sleep 0.5;
is($zed->quiet(op => 'typing', session => $s0, on => \0), undef,
   'burst=0: one after 500ms (5r/s) does');

# --- no zone ----------------------------------------------------------------------

my $nz = open_user(3, 'nz');
my $r = $nz->req(op => 'create', title => 'nozone', isPublic => \1);
$j = $nz->join_session($r->{session}{id});
is($j->{op}, 'joined', 'no zone: join works');
is_deeply($j->{presence}, [], 'with an empty presence list');
for my $op ([presence => status => 'away'], [typing => on => \1]) {
    $e = $nz->req(op => $op->[0], session => $r->{session}{id},
                  $op->[1] => $op->[2]);
    is($e->{code}, 'UNAVAILABLE', "no zone: $op->[0] is UNAVAILABLE");
}
is($nz->req(op => 'send', session => $r->{session}{id}, body => 'x',
            clientMsgId => 'x')->{op}, 'ack', 'no zone: send not limited');

done_testing();
