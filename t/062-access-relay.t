#!/usr/bin/perl
#
# 062-access-relay.t: the access events reach users on another nginx
# (issue 6: "Invitees with a live connection get an invitation event at
# once" - "on any worker or host" in docs/PROTOCOL.md; "A removed
# participant's live connections leave the session at once").
#
# Two nginx instances "a" and "b" share PostgreSQL and Redis
# (collab_redis).  The owner is on a; the invitee has one connection on b
# and one on a, the owner's own worker (each must get the invitation
# exactly once: the relay must not bring a worker's own event back); the
# member joined, member removed, session and deleted events cross from a
# to b; a participant removed on a has its connection on b leave the
# session at once (no more messages, its send -> ACCESS_DENIED), and its
# join from b is refused.
#
# Why: the ops run on the caller's worker, the people they concern are
# anywhere; without the relay they would learn it only on reconnecting.

use strict;
use warnings;
use utf8;

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
    collab_postgres "%%PG_DSN%%" pool=2 timeout=10s;
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_batch_window 2ms;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
            collab_user_name $http_x_user_name;
        }
    }
CONF

(my $conf_b = $conf) =~ s/%%PORT%%/%%PORT2%%/;
$t->start_nginx($conf, name => 'a');
$t->start_nginx($conf_b, name => 'b');

my $dbh = $t->pg_dbh;

sub rows { $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]) }

sub err_code {
    my ($r) = @_;
    return $r->{op} eq 'error' ? $r->{code} : "(op $r->{op})";
}

# subscribers of a Redis channel, waiting up to 10 s for $want of them
sub numsub {
    my ($chan, $want) = @_;
    my $n = 0;
    my $end = time + 10;
    while (time < $end) {
        my $r = Collab::RedisTiny::cmd($t->redis_port, 'PUBSUB', 'NUMSUB',
                                       $chan);
        $n = $r->[1] // 0;
        last if $n >= $want;
        sleep 0.05;
    }
    return $n;
}

sub client {
    my ($user, $inst, %o) = @_;
    my $c = Collab::Chat->open($t, user => $user, name => $o{name},
                               port => $t->port($inst eq 'a' ? 1 : 2));
    is($c->req(op => 'invitations')->{op}, 'invitations',
       "$user is connected to $inst");
    return $c;
}

# the $op events that arrive within $wait seconds
sub all_events {
    my ($c, $op, $wait) = @_;
    my @e;
    while (my $e = $c->take(sub { $_->{op} eq $op }, $wait // 0.7)) {
        push @e, $e;
    }
    return @e;
}

my $NMSG = 0;

sub flows {
    my ($from, $slug, $why, @to) = @_;
    my $cmid = 'm' . ++$NMSG;
    my $r = $from->req(op => 'send', session => $slug, body => $cmid,
                       clientMsgId => $cmid);
    is($r->{op}, 'ack', "$why: acked") or diag(explain($r));
    for my $c (@to) {
        my $e = $c->take(sub { $_->{op} eq 'message'
                               && ($_->{clientMsgId} // '') eq $cmid });
        ok($e, "$why: " . $c->user . ' receives it');
    }
}

is(numsub('collab:users', 2), 2,
   'both instances listen on the users channel');

my $ann = client('ann', 'a', name => 'Ann');
my $bob = client('bob', 'b', name => 'Bob');
my $bob_a = client('bob', 'a', name => 'Bob');
my $carl = client('carl', 'b');
my $dan = client('dan', 'b', name => 'Dan');

my $r = $ann->req(op => 'create', title => 'Relay');
my $slug = $r->{session}{id};
my $sid = rows('SELECT id FROM chat_sessions WHERE slug = ?', $slug);
is($ann->req(op => 'join', session => $slug)->{op}, 'joined',
   'ann creates a private session on a and joins it');


# --- invitation, accept, member joined, messages ----------------------------

$r = $ann->req(op => 'invite', session => $slug, user => 'bob');
is($r->{op}, 'invited', 'ann invites bob');
my $inv = $r->{invitation};
my @ev = all_events($bob, 'invitation');
is_deeply(\@ev, [{ op => 'invitation', invitation => $inv }],
          'bob on b gets the invitation once') or diag(explain(\@ev));
@ev = all_events($bob_a, 'invitation', 0.3);
is_deeply(\@ev, [{ op => 'invitation', invitation => $inv }],
          "bob's tab on the owner's worker gets it once")
    or diag(explain(\@ev));
is(scalar(all_events($ann, 'invitation', 0.1)), 0, 'ann gets none');
is(scalar(all_events($carl, 'invitation', 0.1)), 0, 'carl gets none');

$r = $bob->req(op => 'accept', invitation => $inv->{id});
is($r->{op}, 'accepted', 'bob accepts on b');
@ev = all_events($ann, 'member');
is_deeply(\@ev, [{ op => 'member', session => $slug, user => 'bob',
                   userName => 'Bob', action => 'joined' }],
          'ann on a sees bob join, once') or diag(explain(\@ev));

is($bob->req(op => 'join', session => $slug)->{op}, 'joined', 'bob joins');
is(numsub("collab:s:$sid", 2), 2, 'both instances relay the session');
flows($bob, $slug, 'b -> a', $ann);
flows($ann, $slug, 'a -> b', $bob);


# --- revoke across instances ------------------------------------------------

$r = $ann->req(op => 'invite', session => $slug, user => 'carl');
my $cinv = $r->{invitation}{id};
is(scalar(all_events($carl, 'invitation')), 1, 'carl on b is invited');
is($ann->req(op => 'revoke', invitation => $cinv)->{op}, 'revoked',
   'ann revokes it');
@ev = all_events($carl, 'invitation_revoked');
is_deeply(\@ev, [{ op => 'invitation_revoked', invitation => $cinv,
                   session => $slug }],
          'carl on b is told at once, once') or diag(explain(\@ev));
is(err_code($carl->req(op => 'accept', invitation => $cinv)), 'CONFLICT',
   'and cannot accept');


# --- remove: the removed user's connection on b leaves ----------------------

$r = $ann->req(op => 'invite', session => $slug, user => 'dan');
is(scalar(all_events($dan, 'invitation')), 1, 'dan on b is invited');
is($dan->req(op => 'accept', invitation => $r->{invitation}{id})->{op},
   'accepted', 'dan accepts');
is($dan->req(op => 'join', session => $slug)->{op}, 'joined', 'dan joins');
all_events($_, 'member', 0.3) for $ann, $bob;
flows($ann, $slug, 'before the removal', $bob, $dan);

$r = $ann->req(op => 'remove', session => $slug, user => 'dan');
is($r->{op}, 'removed', 'ann removes dan');
for my $c ($ann, $bob) {
    @ev = all_events($c, 'member');
    is_deeply(\@ev, [{ op => 'member', session => $slug, user => 'dan',
                       action => 'removed' }],
              $c->user . ' is told once') or diag(explain(\@ev));
}
flows($ann, $slug, 'after the removal', $bob);
ok(!$dan->take(sub { $_->{op} eq 'message' }, 0.7),
   "dan's connection on b gets no more messages");
is(err_code($dan->req(op => 'send', session => $slug, body => 'x',
                      clientMsgId => 'd1')),
   'ACCESS_DENIED', 'dan sends from b: ACCESS_DENIED');
is(err_code($dan->req(op => 'join', session => $slug)), 'ACCESS_DENIED',
   'dan rejoins from b: ACCESS_DENIED');
is(rows(q{SELECT count(*) FROM chat_messages WHERE session_id = ?
          AND user_id = (SELECT id FROM users WHERE external_id = 'dan')},
        $sid), 0, 'nothing of dan is stored');


# --- update and delete reach b ----------------------------------------------

is($ann->req(op => 'update', session => $slug, title => 'Relay 2')->{op},
   'updated', 'ann renames the session');
@ev = all_events($bob, 'session');
is(scalar @ev, 1, 'bob on b gets the session event once');
is($ev[0] && $ev[0]{changes}{title}, 'Relay 2', 'with the new title');

is($ann->req(op => 'delete', session => $slug)->{op}, 'deleted',
   'ann deletes the session');
@ev = all_events($bob, 'deleted');
is_deeply(\@ev, [{ op => 'deleted', session => $slug }],
          'bob on b is told once') or diag(explain(\@ev));
is(err_code($bob->req(op => 'send', session => $slug, body => 'x',
                      clientMsgId => 'b1')),
   'ACCESS_DENIED', 'bob on b has left it: send -> ACCESS_DENIED');
is(rows('SELECT count(*) FROM chat_sessions WHERE id = ?', $sid), 0,
   'the session is gone');

$_->close for $ann, $bob, $bob_a, $carl, $dan;
$dbh->disconnect;

done_testing();
