#!/usr/bin/perl
#
# 043-presence-zone-full.t: a full collab_zone (issue 4).  With the
# smallest zone there is (collab_zone tiny 32k: 8 pages), users join one
# session until a join is refused: UNAVAILABLE, with a message naming
# collab_zone, and an error.log line naming it too.  Nothing crashes (the
# same workers serve on), the members already in keep working (typing,
# presence, send), and once some of them are gone beyond the grace their
# entries are swept and a newcomer gets in.

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
    collab_zone tiny 32k;
    collab_presence_timeout 10s;
    collab_presence_grace 1s;
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

sub open_user {
    Collab::Chat->open($t, user => $_[0], name => $_[1] // 'N',
                       identity => 'query', nontext => 'drop');
}

my $owner = open_user('owner');
my $r = $owner->req(op => 'create', title => 'tiny', isPublic => \1);
my $slug = $r->{session}{id};
ok($slug, 'session created') or BAIL_OUT('no session');
is($owner->join_session($slug)->{op}, 'joined', 'owner joined');

my (@in, $refused, $refused_conn);
for my $i (1 .. 1000) {
    my $c = open_user("user$i", 'x' x 40);
    my $j = $c->join_session($slug);
    if ($j->{op} eq 'joined') {
        push @in, $c;
        next;
    }
    $refused = $j;
    $refused_conn = $c;
    last;
}
note(scalar(@in) + 1 . ' users joined before the zone was full');
ok($refused, 'a join was refused at last');
is($refused && $refused->{code}, 'UNAVAILABLE', 'with UNAVAILABLE');
like($refused && $refused->{message} // '', qr/collab_zone/,
     'whose message names collab_zone');
like($t->error_log, qr/\[error\].*collab_zone/,
     'error.log has a line naming collab_zone');
ok(@in >= 10, 'at least 10 entries fit in 32k');

is_deeply([$t->nginx_worker_pids], \@workers, 'no worker died');

# the refused connection is still usable
is($refused_conn->req(op => 'ping')->{op}, 'pong',
   'the refused connection still answers');
$r = $refused_conn->req(op => 'typing', session => $slug, on => \1);
is($r->{code}, 'ACCESS_DENIED', 'and is not a member');

# the members keep working
my ($a, $b) = ($in[0], $in[1]);
Collab::Chat::settle(0.5, $owner, $a, $b);
$_->grab(sub { 1 }) for $owner, $a, $b;
is($a->quiet(op => 'typing', session => $slug, on => \1), undef,
   'a member types');
ok($owner->wait_typing($a->user, 1), 'the owner sees it');
is($a->quiet(op => 'presence', session => $slug, status => 'away'), undef,
   'a member goes away');
ok($owner->wait_presence('updates', $a->user, 'away'),
   'the owner sees it');
is($a->req(op => 'send', session => $slug, body => 'still here',
           clientMsgId => 'm1')->{op}, 'ack', 'a member sends');

# some leave; beyond the grace their entries are swept, room for others
$_->close for @in[-5 .. -1];
my $gone = $owner->wait_all('leaves', [map { $_->user } @in[-5 .. -1]], 15);
is(scalar keys %$gone, 5, 'the owner sees 5 leave');

my $joined;
my $end = time + 15;
while (!$joined && time < $end) {
    my $j = $refused_conn->join_session($slug);
    $joined = $j->{op} eq 'joined';
    sleep 0.5 unless $joined;
}
ok($joined, 'the refused user joins once entries were freed');
ok($owner->wait_presence('joins', $refused_conn->user),
   'the owner sees the join');

is_deeply([$t->nginx_worker_pids], \@workers, 'still the same workers');

done_testing();
