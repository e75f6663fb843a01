#!/usr/bin/perl
#
# 061-access-race.t: maxParticipants holds when many accept or join at
# the same moment (issue 6: "up to maxParticipants (-> CONFLICT when
# full)").
#
# 2 workers (reuseport) with 4 PostgreSQL connections each, so that the
# statements really run side by side.  Each round: a session that has
# room for exactly one more participant; 8 invitees send "accept" at once
# (or 8 strangers "join" a public one at once).  Exactly one may get in,
# the 7 others get CONFLICT, and the table must hold the limit, never
# more.  Several rounds, as a race shows only sometimes.
#
# Why: the room check is a count(*) in the same statement as the INSERT;
# under READ COMMITTED two statements can both count N-1 and both insert,
# unless the session row is locked first.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;

my $t = Collab::Test->new;
$t->start_pg;

$t->start_nginx(<<'CONF', worker_processes => 2);
    collab_postgres "%%PG_DSN%%" pool=4 timeout=10s;
    collab_batch_window 2ms;

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
        }
    }
CONF

my $dbh = $t->pg_dbh;

sub rows { $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]) }

my $N = 8;
my $ROUNDS = 10;

my $owner = Collab::Chat->open($t, user => 'owner');
my @c = map { Collab::Chat->open($t, user => "u$_") } 1 .. $N;
for my $c ($owner, @c) {
    is($c->req(op => 'invitations')->{op}, 'invitations',
       $c->user . ' is connected');
}

# every client sends its request at once; returns the replies' ops/codes
sub all_at_once {
    my (@reqs) = @_;        # [client, {request}] ...
    my $i = 0;
    for my $x (@reqs) {
        $x->[1]{ref} = 'race' . ++$i;
        $x->[0]->send($x->[1]);
    }
    my @out;
    for my $x (@reqs) {
        my $ref = $x->[1]{ref};
        my $r = $x->[0]->take(sub { ($_->{ref} // '') eq $ref }, 15)
            // { op => '(no reply)' };
        push @out, $r->{op} eq 'error' ? $r->{code} : $r->{op};
    }
    return @out;
}

my (@acc_over, @join_over, @acc_bad, @join_bad);

for my $round (1 .. $ROUNDS) {

    # private, room for the owner and one more
    my $r = $owner->req(op => 'create', title => "acc $round",
                        maxParticipants => 2);
    my $slug = $r->{session}{id};
    my @inv;
    for my $c (@c) {
        $r = $owner->req(op => 'invite', session => $slug, user => $c->user);
        push @inv, $r->{invitation}{id};
    }
    my @got = all_at_once(map { [$c[$_], { op => 'accept',
                                           invitation => $inv[$_] }] }
                          0 .. $N - 1);
    my $n = rows(q{SELECT count(*) FROM chat_participants p
                   JOIN chat_sessions s ON s.id = p.session_id
                   WHERE s.slug = ?}, $slug);
    my $accepted = grep { $_ eq 'accepted' } @got;
    my $conflict = grep { $_ eq 'CONFLICT' } @got;
    push @acc_over, "round $round: $n participants, $accepted accepted"
        if $n > 2;
    push @acc_bad, "round $round: @got"
        unless $accepted == 1 && $conflict == $N - 1;

    # public, room for the owner and one more
    $r = $owner->req(op => 'create', title => "join $round", isPublic => \1,
                     maxParticipants => 2);
    $slug = $r->{session}{id};
    @got = all_at_once(map { [$_, { op => 'join', session => $slug }] } @c);
    $n = rows(q{SELECT count(*) FROM chat_participants p
                JOIN chat_sessions s ON s.id = p.session_id
                WHERE s.slug = ?}, $slug);
    my $joined = grep { $_ eq 'joined' } @got;
    $conflict = grep { $_ eq 'CONFLICT' } @got;
    push @join_over, "round $round: $n participants, $joined joined"
        if $n > 2;
    push @join_bad, "round $round: @got"
        unless $joined == 1 && $conflict == $N - 1;
}

is_deeply(\@acc_over, [],
          "$N accepts at once into a session with room for one: never "
          . 'more than maxParticipants participants');
is_deeply(\@acc_bad, [], 'and exactly one accepted, the others CONFLICT');
is_deeply(\@join_over, [],
          "$N joins at once of a public session with room for one: never "
          . 'more than maxParticipants participants');
is_deeply(\@join_bad, [], 'and exactly one joined, the others CONFLICT');

is(rows(q{SELECT count(*) FROM (
              SELECT s.id FROM chat_sessions s
              JOIN chat_participants p ON p.session_id = s.id
              GROUP BY s.id, s.max_participants
              HAVING count(*) > s.max_participants) x}), 0,
   'no session in the table is over its limit');

$_->close for $owner, @c;
$dbh->disconnect;

done_testing();
