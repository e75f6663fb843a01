#!/usr/bin/perl
#
# 060-access-rules.t: who may do what to a session, over collab.v1
# (issue 6, "Access rules" and "Invitations").
#
# Every rule is tried from the wrong user: a non-participant (join,
# history, send, presence, typing of a private session), a non-owner, both
# a stranger and a member (invite, update, remove, delete, revoke, a
# session's invitations), an invitee before accepting (join, send,
# history), someone else's invitation (accept, decline), a removed
# participant (its live connections leave at once; it can neither send
# nor rejoin), an expired invitation (collab_invite_ttl 2s: accept ->
# CONFLICT and the row says "expired"), a full session (accept and public
# join -> CONFLICT).  Each gets its exact error code AND leaves every
# table as it was: the test compares a full dump of users, chat_sessions,
# chat_participants, chat_invitations and chat_messages before and after.
# Then the right user does the same things and the tables change as they
# should: invite -> the invitee's live "invitation" event -> accept -> the
# owner sees "member joined" -> messages both ways; decline, revoke (the
# invitee's live "invitation_revoked"), remove, update (the "session"
# event), delete (the "deleted" event, everything cascades).  Titles,
# user ids and bodies that look like SQL or are not ASCII are stored and
# returned byte for byte.
#
# Two nginx instances share the database: "main" (collab_invite_ttl 1h,
# so no step races an expiry) and "short" (collab_invite_ttl 2s) for the
# expiry cases.  worker_processes 1 each: events are same-worker here;
# across workers they go through Redis (t/05x).

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;

binmode(Test::More->builder->$_, ':encoding(UTF-8)')
    for qw(output failure_output todo_output);

my $t = Collab::Test->new;
$t->start_pg;

my $conf = <<'CONF';
    collab_postgres "%%PG_DSN%%" pool=2 timeout=10s;
    collab_batch_window 2ms;
    collab_invite_ttl TTL;

    server {
        listen 127.0.0.1:PORT;

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
            collab_user_name $http_x_user_name;
        }
    }
CONF

(my $main_conf = $conf) =~ s/TTL/1h/;
$main_conf =~ s/PORT/%%PORT%%/;
(my $short_conf = $conf) =~ s/TTL/2s/;
$short_conf =~ s/PORT/%%PORT2%%/;

$t->start_nginx($main_conf);
$t->start_nginx($short_conf, name => 'short');

my $dbh = $t->pg_dbh;

sub rows { $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]) }

sub uid { rows('SELECT id FROM users WHERE external_id = ?', $_[0]) }

sub sid { rows('SELECT id FROM chat_sessions WHERE slug = ?', $_[0]) }

sub err_code {
    my ($r) = @_;
    return $r->{op} eq 'error' ? $r->{code} : "(op $r->{op})";
}

# every row of every table the module writes
my @TABLES = (
    users             => 'id',
    chat_sessions     => 'id',
    chat_participants => 'session_id, user_id',
    chat_invitations  => 'id',
    chat_messages     => 'session_id, seq',
);

sub snapshot {
    my %s;
    my @t = @TABLES;
    while (my ($table, $order) = splice @t, 0, 2) {
        $s{$table} = $dbh->selectall_arrayref(
            "SELECT * FROM $table ORDER BY $order", { Slice => {} });
    }
    return \%s;
}

# refused($client, $code, $why, %request): the reply is error $code and
# no table changed
sub refused {
    my ($c, $code, $why, %r) = @_;
    my $before = snapshot();
    my $reply = $c->req(%r);
    my $ok = is(err_code($reply), $code, "$why: $code");
    diag(explain($reply)) unless $ok;
    is_deeply(snapshot(), $before, "$why: the tables are unchanged");
    return $reply;
}

# a client whose user row exists (an op that needs the user has run)
sub client {
    my (%o) = @_;
    my $user = $o{user};
    utf8::encode($o{user}) if utf8::is_utf8($o{user});
    utf8::encode($o{name}) if defined $o{name} && utf8::is_utf8($o{name});
    $o{port} = $t->port(2) if delete $o{short};
    my $c = Collab::Chat->open($t, %o);
    $c->{user} = $user;
    my $r = $c->req(op => 'invitations');
    is($r->{op}, 'invitations', "$user is connected")
        or diag(explain($r));
    return $c;
}

sub event {
    my ($c, $op, $timeout) = @_;
    return $c->take(sub { $_->{op} eq $op }, $timeout // 10);
}

# nothing with this op arrives within $wait seconds
sub no_event {
    my ($c, $op, $why, $wait) = @_;
    my $e = $c->take(sub { $_->{op} eq $op }, $wait // 0.5);
    ok(!$e, $why) or diag(explain($e));
}

my $NMSG = 0;

# $from sends; $from gets the ack, every client in @to the event
sub flows {
    my ($from, $slug, $body, $why, @to) = @_;
    my $cmid = 'm' . ++$NMSG;
    my $r = $from->req(op => 'send', session => $slug, body => $body,
                       clientMsgId => $cmid);
    is($r->{op}, 'ack', "$why: acked") or diag(explain($r));
    for my $c (@to) {
        my $e = $c->take(sub { $_->{op} eq 'message'
                               && ($_->{clientMsgId} // '') eq $cmid });
        is($e && $e->{body}, $body, "$why: " . $c->user . ' receives it');
    }
    $from->take(sub { $_->{op} eq 'message'
                      && ($_->{clientMsgId} // '') eq $cmid });
    return $r;
}

my $ISO = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;


# --- the cast ---------------------------------------------------------------

my $ann = client(user => 'ann', name => 'Ann');     # owns everything
my $bob = client(user => 'bob', name => 'Bob');     # invited, accepts
my $carl = client(user => 'carl');                  # invited, declines
my $dan = client(user => 'dan', name => 'Dan');     # member, removed
my $dan2 = client(user => 'dan', name => 'Dan');    # dan's second tab
my $eve = client(user => 'eve', name => 'Eve');     # a stranger

my $r = $ann->req(op => 'create', title => 'Plan');
is($r->{op}, 'created', 'ann creates a private session');
my $plan = $r->{session}{id} // '';
ok(!$r->{session}{isPublic}, 'it is private');
is($ann->req(op => 'join', session => $plan)->{op}, 'joined',
   'the owner joins it');
flows($ann, $plan, 'first', 'a message before anyone else is in');


# --- a non-participant of a private session ---------------------------------

refused($eve, 'ACCESS_DENIED', 'a stranger joins a private session',
        op => 'join', session => $plan);
refused($eve, 'ACCESS_DENIED', 'a stranger joins it with since',
        op => 'join', session => $plan, since => 0);
refused($eve, 'ACCESS_DENIED', 'a stranger reads its history',
        op => 'history', session => $plan);
refused($eve, 'ACCESS_DENIED', 'a stranger sends into it',
        op => 'send', session => $plan, body => 'hi', clientMsgId => 'e1');
refused($eve, 'ACCESS_DENIED', 'a stranger sets presence in it',
        op => 'presence', session => $plan, status => 'away');
refused($eve, 'ACCESS_DENIED', 'a stranger types in it',
        op => 'typing', session => $plan, on => \1);
refused($eve, 'NOT_FOUND', 'a join of an unknown session',
        op => 'join', session => 'no-such-session');
no_event($eve, 'message', 'the stranger receives no message', 0.3);


# --- invite: who may, and what ----------------------------------------------

refused($ann, 'BAD_REQUEST', 'invite without a user',
        op => 'invite', session => $plan);
refused($ann, 'BAD_REQUEST', 'invite with an empty user',
        op => 'invite', session => $plan, user => '');
refused($ann, 'BAD_REQUEST', 'invite with a 257-byte user',
        op => 'invite', session => $plan, user => 'u' x 257);
refused($ann, 'BAD_REQUEST', 'invite with a numeric user',
        op => 'invite', session => $plan, user => 42);
refused($ann, 'BAD_REQUEST', 'invite without a session',
        op => 'invite', user => 'bob');
refused($ann, 'BAD_REQUEST', 'invite oneself',
        op => 'invite', session => $plan, user => 'ann');
refused($ann, 'NOT_FOUND', 'invite into an unknown session',
        op => 'invite', session => 'no-such-session', user => 'bob');
refused($ann, 'NOT_FOUND', 'invite an unknown user into an unknown session',
        op => 'invite', session => 'no-such-session', user => 'nobody-1');
refused($eve, 'ACCESS_DENIED', 'a stranger invites',
        op => 'invite', session => $plan, user => 'bob');
refused($eve, 'ACCESS_DENIED',
        'a stranger invites a user who does not exist yet',
        op => 'invite', session => $plan, user => 'nobody-2');
refused($eve, 'BAD_REQUEST', 'a stranger invites herself (fields are '
        . 'checked before rights)',
        op => 'invite', session => $plan, user => 'eve');
no_event($bob, 'invitation', 'no invitation reaches bob', 0.3);

# the owner invites bob: the reply, bob's live event, the row

$r = $ann->req(op => 'invite', session => $plan, user => 'bob');
is($r->{op}, 'invited', 'the owner invites bob') or diag(explain($r));
my $inv = $r->{invitation} // {};
like($inv->{id} // '', qr/^\d+$/, 'the invitation has an id');
is_deeply([@$inv{qw(session title invitedBy invitee status)}],
          [$plan, 'Plan', 'ann', 'bob', 'pending'],
          'session, title, invitedBy, invitee, status');
like($inv->{expiresAt} // '', $ISO, 'expiresAt');
like($inv->{createdAt} // '', $ISO, 'createdAt');
ok(($inv->{expiresAt} // '') gt ($inv->{createdAt} // ''),
   'it expires after it was made');

my $ev = event($bob, 'invitation');
is_deeply($ev, { op => 'invitation', invitation => $inv },
          'bob, connected, gets the invitation event at once')
    or diag(explain($ev));
no_event($eve, 'invitation', 'nobody else does', 0.2);

is_deeply($dbh->selectall_arrayref(
              'SELECT session_id, invited_user_id, invited_by, status,
                      responded_at IS NULL
               FROM chat_invitations WHERE id = ?', undef, $inv->{id}),
          [[sid($plan), uid('bob'), uid('ann'), 'pending', 1]],
          'the row: session, invitee, inviter, pending, no response');
is(rows(q{SELECT round(extract(epoch FROM expires_at - created_at))
          FROM chat_invitations WHERE id = ?}, $inv->{id}), 3600,
   'it expires collab_invite_ttl (1h) after its creation');

refused($ann, 'CONFLICT', 'invite bob again while pending',
        op => 'invite', session => $plan, user => 'bob');

$r = $bob->req(op => 'invitations');
is_deeply($r->{invitations}, [$inv], "bob's invitations list it");
$r = $ann->req(op => 'invitations', session => $plan);
is_deeply($r->{invitations}, [$inv], "the session's invitations list it");
$r = $ann->req(op => 'invitations');
is_deeply($r->{invitations}, [], 'the owner has none of her own');
refused($bob, 'ACCESS_DENIED', "the invitee lists the session's invitations",
        op => 'invitations', session => $plan);
refused($eve, 'ACCESS_DENIED', "a stranger lists the session's invitations",
        op => 'invitations', session => $plan);
refused($eve, 'NOT_FOUND', "the invitations of an unknown session",
        op => 'invitations', session => 'no-such-session');


# --- the invitee before accepting -------------------------------------------

refused($bob, 'ACCESS_DENIED', 'the invitee joins before accepting',
        op => 'join', session => $plan);
refused($bob, 'ACCESS_DENIED', 'the invitee sends before accepting',
        op => 'send', session => $plan, body => 'early',
        clientMsgId => 'b0');
refused($bob, 'ACCESS_DENIED', 'the invitee reads history before accepting',
        op => 'history', session => $plan);
is(rows('SELECT count(*) FROM chat_participants WHERE session_id = ?
         AND user_id = ?', sid($plan), uid('bob')), 0,
   'an invitation does not make a participant');

# someone else's invitation, or none

refused($eve, 'NOT_FOUND', "a stranger accepts bob's invitation",
        op => 'accept', invitation => $inv->{id});
refused($eve, 'NOT_FOUND', "a stranger declines bob's invitation",
        op => 'decline', invitation => $inv->{id});
refused($ann, 'NOT_FOUND', "the owner accepts bob's invitation",
        op => 'accept', invitation => $inv->{id});
refused($bob, 'NOT_FOUND', 'accept of an invitation that does not exist',
        op => 'accept', invitation => $inv->{id} + 1000);
refused($bob, 'BAD_REQUEST', 'accept without an id',
        op => 'accept');
refused($bob, 'BAD_REQUEST', 'accept with a string id',
        op => 'accept', invitation => "$inv->{id}");
refused($bob, 'BAD_REQUEST', 'accept with id 0',
        op => 'accept', invitation => 0);


# --- accept -> member joined -> messages both ways --------------------------

$r = $bob->req(op => 'accept', invitation => $inv->{id});
is($r->{op}, 'accepted', 'bob accepts') or diag(explain($r));
is($r->{session}{id}, $plan, 'accepted names the session');
is($r->{session}{role}, 'member', 'as a member');
is($r->{session}{owner}, 'ann', 'owned by ann');

$ev = event($ann, 'member');
is_deeply($ev, { op => 'member', session => $plan, user => 'bob',
                 userName => 'Bob', action => 'joined' },
          'the owner, joined, sees bob join') or diag(explain($ev));

is_deeply($dbh->selectall_arrayref(
              'SELECT status, responded_at IS NOT NULL FROM chat_invitations
               WHERE id = ?', undef, $inv->{id}),
          [['accepted', 1]], 'the invitation is accepted, with responded_at');
is(rows('SELECT role FROM chat_participants WHERE session_id = ?
         AND user_id = ?', sid($plan), uid('bob')), 'member',
   'bob is a participant now');
is_deeply($bob->req(op => 'invitations')->{invitations}, [],
          'no pending invitation is left to bob');

$r = $bob->req(op => 'join', session => $plan);
is($r->{op}, 'joined', 'bob joins');
is_deeply([map { $_->{body} } @{ $r->{messages} // [] }], ['first'],
          'and reads what was said before');
flows($bob, $plan, 'hello from bob', 'bob -> ann', $ann);
flows($ann, $plan, 'hello from ann', 'ann -> bob', $bob);
is_deeply($dbh->selectall_arrayref(
              'SELECT u.external_id, m.body FROM chat_messages m
               JOIN users u ON u.id = m.user_id WHERE m.session_id = ?
               ORDER BY m.seq', undef, sid($plan)),
          [['ann', 'first'], ['bob', 'hello from bob'],
           ['ann', 'hello from ann']], 'the messages are stored');

refused($bob, 'CONFLICT', 'accept the same invitation twice',
        op => 'accept', invitation => $inv->{id});
refused($bob, 'CONFLICT', 'decline an accepted invitation',
        op => 'decline', invitation => $inv->{id});
refused($ann, 'CONFLICT', 'revoke an accepted invitation',
        op => 'revoke', invitation => $inv->{id});
refused($ann, 'CONFLICT', 'invite a participant',
        op => 'invite', session => $plan, user => 'bob');


# --- decline, revoke --------------------------------------------------------

$r = $ann->req(op => 'invite', session => $plan, user => 'carl');
is($r->{op}, 'invited', 'the owner invites carl');
my $cinv = $r->{invitation}{id};
ok(event($carl, 'invitation'), 'carl gets it');

refused($bob, 'ACCESS_DENIED', "a member revokes carl's invitation",
        op => 'revoke', invitation => $cinv);
refused($carl, 'ACCESS_DENIED', 'the invitee revokes his own invitation',
        op => 'revoke', invitation => $cinv);
refused($eve, 'ACCESS_DENIED', "a stranger revokes carl's invitation",
        op => 'revoke', invitation => $cinv);
refused($ann, 'NOT_FOUND', 'revoke of an invitation that does not exist',
        op => 'revoke', invitation => $cinv + 1000);
no_event($carl, 'invitation_revoked', 'carl is told nothing', 0.2);

$r = $carl->req(op => 'decline', invitation => $cinv);
is($r->{op}, 'declined', 'carl declines') or diag(explain($r));
is($r->{session}{id}, $plan, 'declined names the session');
is_deeply($dbh->selectall_arrayref(
              'SELECT status, responded_at IS NOT NULL FROM chat_invitations
               WHERE id = ?', undef, $cinv),
          [['declined', 1]], 'the row says declined');
is(rows('SELECT count(*) FROM chat_participants WHERE session_id = ?
         AND user_id = ?', sid($plan), uid('carl')), 0,
   'carl is not a participant');
no_event($ann, 'member', 'nobody is told of a decline', 0.2);
refused($carl, 'CONFLICT', 'accept after declining',
        op => 'accept', invitation => $cinv);
refused($ann, 'CONFLICT', 'revoke a declined invitation',
        op => 'revoke', invitation => $cinv);
refused($carl, 'ACCESS_DENIED', 'carl joins after declining',
        op => 'join', session => $plan);

$r = $ann->req(op => 'invite', session => $plan, user => 'carl');
is($r->{op}, 'invited', 'a declined invitation does not block a new one');
my $cinv2 = $r->{invitation}{id};
isnt($cinv2, $cinv, 'which is a new invitation');
ok(event($carl, 'invitation'), 'carl gets it');

$r = $ann->req(op => 'revoke', invitation => $cinv2);
is_deeply([$r->{op}, $r->{invitation}], ['revoked', $cinv2],
          'the owner revokes it') or diag(explain($r));
$ev = event($carl, 'invitation_revoked');
is_deeply($ev, { op => 'invitation_revoked', invitation => $cinv2,
                 session => $plan },
          'carl is told at once') or diag(explain($ev));
is(rows('SELECT status FROM chat_invitations WHERE id = ?', $cinv2),
   'revoked', 'the row says revoked');
refused($carl, 'CONFLICT', 'accept a revoked invitation',
        op => 'accept', invitation => $cinv2);
refused($carl, 'CONFLICT', 'decline a revoked invitation',
        op => 'decline', invitation => $cinv2);
refused($ann, 'CONFLICT', 'revoke it again',
        op => 'revoke', invitation => $cinv2);
refused($carl, 'ACCESS_DENIED', 'carl joins after the revocation',
        op => 'join', session => $plan);
is_deeply($carl->req(op => 'invitations')->{invitations}, [],
          'carl has no pending invitation');


# --- the owner's other rights, from the wrong user --------------------------

# dan becomes a member (two tabs), to be a non-owner participant
$r = $ann->req(op => 'invite', session => $plan, user => 'dan');
my $dinv = $r->{invitation}{id};
ok(event($dan, 'invitation') && event($dan2, 'invitation'),
   "both of dan's connections get the invitation");
is($dan->req(op => 'accept', invitation => $dinv)->{op}, 'accepted',
   'dan accepts');
is(event($ann, 'member')->{user}, 'dan', 'ann sees dan join');
is(event($bob, 'member')->{user}, 'dan', 'so does bob');
for my $c ($dan, $dan2) {
    is($c->req(op => 'join', session => $plan)->{op}, 'joined',
       'a tab of dan joins');
}

# a pending invitation for the revoke attempts
$r = $ann->req(op => 'invite', session => $plan, user => 'carl');
my $cinv3 = $r->{invitation}{id};
ok($cinv3, 'carl is invited again');

for my $who ([$dan, 'a member'], [$eve, 'a stranger']) {
    my ($c, $as) = @$who;
    refused($c, 'ACCESS_DENIED', "$as invites",
            op => 'invite', session => $plan, user => 'fred');
    refused($c, 'ACCESS_DENIED', "$as renames the session",
            op => 'update', session => $plan, title => 'mine now');
    refused($c, 'ACCESS_DENIED', "$as makes it public",
            op => 'update', session => $plan, isPublic => \1);
    refused($c, 'ACCESS_DENIED', "$as lifts its limit",
            op => 'update', session => $plan, maxParticipants => undef);
    refused($c, 'ACCESS_DENIED', "$as removes a member",
            op => 'remove', session => $plan, user => 'bob');
    refused($c, 'ACCESS_DENIED', "$as removes the owner",
            op => 'remove', session => $plan, user => 'ann');
    refused($c, 'ACCESS_DENIED', "$as removes a non-participant",
            op => 'remove', session => $plan, user => 'carl');
    refused($c, 'ACCESS_DENIED', "$as deletes the session",
            op => 'delete', session => $plan);
    refused($c, 'ACCESS_DENIED', "$as revokes a pending invitation",
            op => 'revoke', invitation => $cinv3);
    refused($c, 'ACCESS_DENIED', "$as lists the session's invitations",
            op => 'invitations', session => $plan);
}
refused($dan, 'ACCESS_DENIED', 'a member removes himself',
        op => 'remove', session => $plan, user => 'dan');
no_event($ann, 'session', 'no session event came of it', 0.2);
no_event($bob, 'member', 'no member event came of it', 0.2);
no_event($carl, 'invitation_revoked', 'carl was told nothing', 0.1);

# the owner's ops with bad fields, or on an unknown session

refused($ann, 'NOT_FOUND', 'update of an unknown session',
        op => 'update', session => 'no-such-session', title => 'x');
refused($ann, 'NOT_FOUND', 'remove from an unknown session',
        op => 'remove', session => 'no-such-session', user => 'bob');
refused($ann, 'NOT_FOUND', 'delete of an unknown session',
        op => 'delete', session => 'no-such-session');
refused($ann, 'BAD_REQUEST', 'update with an empty title',
        op => 'update', session => $plan, title => '');
refused($ann, 'BAD_REQUEST', 'update with a 201-character title',
        op => 'update', session => $plan, title => "\x{e9}" x 201);
refused($ann, 'BAD_REQUEST', 'update with a blank title',
        op => 'update', session => $plan, title => '   ');
refused($ann, 'BAD_REQUEST', 'update with a numeric title',
        op => 'update', session => $plan, title => 5);
refused($ann, 'BAD_REQUEST', 'update with isPublic "yes"',
        op => 'update', session => $plan, isPublic => 'yes');
refused($ann, 'BAD_REQUEST', 'update with maxParticipants 0',
        op => 'update', session => $plan, maxParticipants => 0);
refused($ann, 'BAD_REQUEST', 'update with maxParticipants "3"',
        op => 'update', session => $plan, maxParticipants => '3');
refused($ann, 'BAD_REQUEST', 'remove the owner',
        op => 'remove', session => $plan, user => 'ann');
refused($ann, 'NOT_FOUND', 'remove a user who is no participant',
        op => 'remove', session => $plan, user => 'eve');
refused($ann, 'NOT_FOUND', 'remove a user who does not exist',
        op => 'remove', session => $plan, user => 'nobody-3');
refused($ann, 'BAD_REQUEST', 'remove without a user',
        op => 'remove', session => $plan);


# --- remove: the removed participant's connections leave at once ------------

$r = $ann->req(op => 'remove', session => $plan, user => 'dan');
is_deeply([$r->{op}, $r->{session}], ['removed', $plan],
          'the owner removes dan')
    or diag(explain($r));
for my $c ($ann, $bob) {
    $ev = event($c, 'member');
    is_deeply($ev, { op => 'member', session => $plan, user => 'dan',
                     action => 'removed' },
              $c->user . ' is told dan was removed') or diag(explain($ev));
}
is(rows('SELECT count(*) FROM chat_participants WHERE session_id = ?
         AND user_id = ?', sid($plan), uid('dan')), 0,
   'his participant row is gone');
is(rows('SELECT count(*) FROM chat_participants WHERE session_id = ?',
        sid($plan)), 2, 'ann and bob remain');

flows($ann, $plan, 'after dan left', 'the others still talk', $bob);
for my $c ($dan, $dan2) {
    no_event($c, 'message', "dan's tab gets no more messages");
}
refused($dan, 'ACCESS_DENIED', 'the removed member sends (live connection)',
        op => 'send', session => $plan, body => 'still here?',
        clientMsgId => 'd1');
refused($dan2, 'ACCESS_DENIED', 'his other tab sends',
        op => 'send', session => $plan, body => 'still here?',
        clientMsgId => 'd2');
refused($dan, 'ACCESS_DENIED', 'the removed member reads history',
        op => 'history', session => $plan);
refused($dan, 'ACCESS_DENIED', 'the removed member types',
        op => 'typing', session => $plan, on => \1);
refused($dan, 'ACCESS_DENIED', 'the removed member rejoins',
        op => 'join', session => $plan);
my $dan3 = client(user => 'dan');
refused($dan3, 'ACCESS_DENIED', 'the removed member rejoins on a new '
        . 'connection', op => 'join', session => $plan, since => 0);
refused($ann, 'NOT_FOUND', 'remove him again',
        op => 'remove', session => $plan, user => 'dan');
refused($dan, 'CONFLICT', 'his accepted invitation cannot be reused',
        op => 'accept', invitation => $dinv);


# --- full sessions ----------------------------------------------------------

# private, maxParticipants 2: the owner and one more
$r = $ann->req(op => 'create', title => 'Small', maxParticipants => 2);
my $small = $r->{session}{id};
my %sinv;
for my $u (qw(bob carl)) {
    $r = $ann->req(op => 'invite', session => $small, user => $u);
    is($r->{op}, 'invited', "$u is invited into a session of 2");
    $sinv{$u} = $r->{invitation}{id};
}
is($bob->req(op => 'accept', invitation => $sinv{bob})->{op}, 'accepted',
   'bob accepts: the session is full');
refused($carl, 'CONFLICT', 'accept into a full private session',
        op => 'accept', invitation => $sinv{carl});
is(rows('SELECT status FROM chat_invitations WHERE id = ?', $sinv{carl}),
   'pending', 'the invitation stays pending');
refused($carl, 'ACCESS_DENIED', 'carl joins the full session',
        op => 'join', session => $small);
refused($eve, 'ACCESS_DENIED', 'a stranger joins the full private session',
        op => 'join', session => $small);

# public, maxParticipants 2
$r = $ann->req(op => 'create', title => 'Open', isPublic => \1,
               maxParticipants => 2);
my $open = $r->{session}{id};
is($ann->req(op => 'join', session => $open)->{op}, 'joined', 'ann joins');
is($bob->req(op => 'join', session => $open)->{op}, 'joined',
   'bob joins the public session: it is full');
refused($eve, 'CONFLICT', 'a join of a full public session',
        op => 'join', session => $open);
refused($eve, 'CONFLICT', 'the same with since',
        op => 'join', session => $open, since => 0);
refused($eve, 'ACCESS_DENIED', 'send into it without a join',
        op => 'send', session => $open, body => 'x', clientMsgId => 'e2');
$r = $ann->req(op => 'invite', session => $open, user => 'eve');
is($r->{op}, 'invited', 'an invitation into the full public session');
my $einv = $r->{invitation}{id};
refused($eve, 'CONFLICT', 'accept into a full public session',
        op => 'accept', invitation => $einv);
is($bob->req(op => 'join', session => $open)->{op}, 'joined',
   'a participant still joins a full session (another tab)');

# the owner raises the limit: the room is there
$r = $ann->req(op => 'update', session => $small, maxParticipants => 3);
is($r->{op}, 'updated', 'the owner raises the limit');
is($r->{session}{maxParticipants}, 3, 'to 3');
is($carl->req(op => 'accept', invitation => $sinv{carl})->{op}, 'accepted',
   'now carl may accept');
$r = $ann->req(op => 'update', session => $open, maxParticipants => undef);
is($r->{op}, 'updated', 'the owner lifts the public limit');
is($r->{session}{maxParticipants}, undef, 'maxParticipants null');
is(rows('SELECT max_participants FROM chat_sessions WHERE slug = ?', $open),
   undef, 'NULL in the table');
$ev = event($bob, 'session');
is($ev && $ev->{changes}{maxParticipants}, undef,
   'the joined connections get the session event');
is($eve->req(op => 'join', session => $open)->{op}, 'joined',
   'and a stranger may join');


# --- expired invitations (the "short" instance: collab_invite_ttl 2s) -------

my $sann = client(user => 'ann', name => 'Ann', short => 1);
my $fay = client(user => 'fay', short => 1);
my $gus = client(user => 'gus', short => 1);

$r = $sann->req(op => 'invite', session => $plan, user => 'fay');
is($r->{op}, 'invited', 'fay is invited (ttl 2s)');
my $finv = $r->{invitation};
ok(event($fay, 'invitation'), 'fay gets it');
is(rows(q{SELECT round(extract(epoch FROM expires_at - created_at))
          FROM chat_invitations WHERE id = ?}, $finv->{id}), 2,
   'it expires 2s after its creation');
$r = $sann->req(op => 'invite', session => $plan, user => 'gus');
my $ginv = $r->{invitation};
is($r->{op}, 'invited', 'gus is invited (ttl 2s)');

# wait until PostgreSQL's clock is past both expiries
my $end = time + 10;
sleep 0.25 while time < $end
    && rows(q{SELECT count(*) FROM chat_invitations
              WHERE id IN (?, ?) AND expires_at > now()},
            $finv->{id}, $ginv->{id});

is_deeply($fay->req(op => 'invitations')->{invitations}, [],
          'an expired invitation is not listed to the invitee');
is_deeply([grep { $_->{id} == $finv->{id} }
           @{ $sann->req(op => 'invitations', session => $plan)
                  ->{invitations} // [] }], [],
          'nor to the owner');

my $before = snapshot();
$r = $fay->req(op => 'accept', invitation => $finv->{id});
is(err_code($r), 'CONFLICT', 'accept after expiry: CONFLICT')
    or diag(explain($r));
my ($row) = grep { $_->{id} == $finv->{id} } @{ $before->{chat_invitations} };
$row->{status} = 'expired';
is_deeply(snapshot(), $before,
          'the invitation is marked expired; nothing else changed');
refused($fay, 'CONFLICT', 'accept after expiry, again',
        op => 'accept', invitation => $finv->{id});
refused($fay, 'CONFLICT', 'decline after expiry',
        op => 'decline', invitation => $finv->{id});
refused($fay, 'ACCESS_DENIED', 'fay joins',
        op => 'join', session => $plan);
refused($sann, 'CONFLICT', 'revoke of an expired invitation',
        op => 'revoke', invitation => $finv->{id});

$before = snapshot();
$r = $gus->req(op => 'decline', invitation => $ginv->{id});
is(err_code($r), 'CONFLICT', 'decline after expiry: CONFLICT');
($row) = grep { $_->{id} == $ginv->{id} } @{ $before->{chat_invitations} };
$row->{status} = 'expired';
is_deeply(snapshot(), $before, 'marked expired; nothing else changed');

# a new invitation after expiry works
$r = $sann->req(op => 'invite', session => $plan, user => 'fay');
is($r->{op}, 'invited', 'fay is invited again after the expiry');
isnt($r->{invitation}{id}, $finv->{id}, 'a new invitation');
is($fay->req(op => 'accept', invitation => $r->{invitation}{id})->{op},
   'accepted', 'which she accepts in time');

# an expired invitation still marked pending is renewed in place
my $hal = client(user => 'hal', short => 1);
$r = $sann->req(op => 'invite', session => $plan, user => 'hal');
my $hinv = $r->{invitation};
$end = time + 10;
sleep 0.25 while time < $end
    && rows('SELECT expires_at > now() FROM chat_invitations WHERE id = ?',
            $hinv->{id});
is(rows('SELECT status FROM chat_invitations WHERE id = ?', $hinv->{id}),
   'pending', "hal's invitation expired untouched: still pending");
$r = $sann->req(op => 'invite', session => $plan, user => 'hal');
is($r->{op}, 'invited', 'inviting hal again renews it')
    or diag(explain($r));
is($r->{invitation}{id}, $hinv->{id}, 'in place: the same id');
ok(($r->{invitation}{expiresAt} // '') gt $hinv->{expiresAt},
   'with a later expiry');
is(rows(q{SELECT count(*) FROM chat_invitations i JOIN users u
          ON u.id = i.invited_user_id WHERE u.external_id = 'hal'}), 1,
   'one row for hal');
is($hal->req(op => 'accept', invitation => $hinv->{id})->{op}, 'accepted',
   'hal accepts the renewed invitation');


# --- SQL-looking and non-ASCII input, byte for byte -------------------------

my @titles = (
    q{'); DROP TABLE chat_sessions; --},
    "caf\x{e9} \x{65e5}\x{672c}\x{8a9e} \x{1F600} \x{202E}rtl",
    q{{"a",NULL,"b"} $1 ::text %s \\x00},
);
my @users = (
    q{o'brien"); DELETE FROM users WHERE ('1'='1},
    "jos\x{e9}-\x{65e5}\x{672c}-\x{1F600}",
    q{{a,b} \\N $2 %n},
);
my @bodies = (
    q{Robert'); DROP TABLE chat_messages; --},
    "na\x{ef}ve \x{1F600} \x{65e5}\x{672c}\x{8a9e}\n\ttab",
    q{{"x",NULL} \\ %s $1},
);

for my $i (0 .. $#titles) {
    my $title = $titles[$i];
    my $u = $users[$i];

    $r = $ann->req(op => 'create', title => "draft $i");
    my $slug = $r->{session}{id};
    is($ann->req(op => 'join', session => $slug)->{op}, 'joined',
       "session $i: the owner joins");

    $r = $ann->req(op => 'update', session => $slug, title => $title);
    is($r->{op}, 'updated', "session $i: renamed") or diag(explain($r));
    is($r->{session}{title}, $title, "session $i: the reply has the title");
    $ev = $ann->take(sub { $_->{op} eq 'session'
                           && ($_->{session} // '') eq $slug });
    is($ev && $ev->{changes}{title}, $title,
       "session $i: so does the session event");
    is(rows('SELECT title FROM chat_sessions WHERE slug = ?', $slug),
       $title, "session $i: so does the table");

    my $c = client(user => $u, name => $u);
    $r = $ann->req(op => 'invite', session => $slug, user => $u);
    is($r->{op}, 'invited', "user $i is invited") or diag(explain($r));
    is($r->{invitation}{invitee}, $u, "user $i: invitee as given");
    is($r->{invitation}{title}, $title, "user $i: the title as stored");
    $ev = event($c, 'invitation');
    is_deeply($ev && $ev->{invitation}, $r->{invitation},
              "user $i gets the invitation event");
    is(rows('SELECT count(*) FROM users WHERE external_id = ?', $u), 1,
       "user $i: one user row, with the exact id");

    $r = $c->req(op => 'accept', invitation => $r->{invitation}{id});
    is($r->{op}, 'accepted', "user $i accepts");
    is($r->{session}{title}, $title, "user $i: accepted carries the title");
    $ev = event($ann, 'member');
    is_deeply([$ev && @$ev{qw(user userName action)}], [$u, $u, 'joined'],
              "user $i: the owner sees the exact id and name join");
    is($c->req(op => 'join', session => $slug)->{op}, 'joined',
       "user $i joins");
    $r = flows($c, $slug, $bodies[$i], "user $i sends", $ann);
    my $h = $ann->req(op => 'history', session => $slug);
    is_deeply([map { [$_->{user}, $_->{body}] } @{ $h->{messages} // [] }],
              [[$u, $bodies[$i]]], "user $i: history, byte for byte");
    is_deeply($dbh->selectall_arrayref(
                  'SELECT u.external_id, u.display_name, m.body
                   FROM chat_messages m JOIN users u ON u.id = m.user_id
                   WHERE m.session_id = ?', undef, sid($slug)),
              [[$u, $u, $bodies[$i]]], "user $i: the table, byte for byte");

    $r = $ann->req(op => 'remove', session => $slug, user => $u);
    is($r->{op}, 'removed', "user $i is removed by the exact id");
    $ev = event($ann, 'member');
    is($ev && $ev->{user}, $u, "user $i: the removal names the exact id");
    refused($c, 'ACCESS_DENIED', "user $i sends after removal",
            op => 'send', session => $slug, body => 'x', clientMsgId => 'x');
    $c->close;
}
is(rows('SELECT count(*) FROM users'), 8 + scalar(@users),
   'no user row was lost or added along the way')
    or diag(explain($dbh->selectcol_arrayref(
        'SELECT external_id FROM users ORDER BY id')));


# --- update and delete by the owner -----------------------------------------

$r = $ann->req(op => 'update', session => $plan, title => 'Plan B',
               isPublic => \0);
is($r->{op}, 'updated', 'the owner renames the session');
$ev = $bob->take(sub { $_->{op} eq 'session'
                       && ($_->{session} // '') eq $plan });
ok($ev, 'bob, joined, gets the session event');
is($ev && $ev->{changes}{title}, 'Plan B', 'with the new title');
is(rows('SELECT title FROM chat_sessions WHERE slug = ?', $plan), 'Plan B',
   'the table has it');

my $plan_id = sid($plan);
$before = snapshot();
$r = $ann->req(op => 'delete', session => $plan);
is_deeply([$r->{op}, $r->{session}], ['deleted', $plan],
          'the owner deletes the session') or diag(explain($r));
$ev = event($bob, 'deleted');
is_deeply($ev, { op => 'deleted', session => $plan },
          'bob, joined, is told') or diag(explain($ev));
my $after = snapshot();
for my $table (qw(chat_participants chat_invitations chat_messages)) {
    is_deeply($after->{$table},
              [grep { $_->{session_id} != $plan_id }
               @{ $before->{$table} }],
              "$table: only the session's rows are gone");
}
is_deeply($after->{chat_sessions},
          [grep { $_->{id} != $plan_id } @{ $before->{chat_sessions} }],
          'chat_sessions: only that row is gone');
is_deeply($after->{users}, $before->{users}, 'users: unchanged');
refused($bob, 'ACCESS_DENIED', 'bob sends into the deleted session',
        op => 'send', session => $plan, body => 'anyone?',
        clientMsgId => 'b9');
refused($bob, 'NOT_FOUND', 'bob joins the deleted session',
        op => 'join', session => $plan);
refused($ann, 'NOT_FOUND', 'the owner deletes it again',
        op => 'delete', session => $plan);
refused($bob, 'NOT_FOUND', 'accept an invitation of a deleted session '
        . '(it cascaded away)',
        op => 'accept', invitation => $inv->{id});

is_deeply($ann->req(op => 'ping', ref => 'end'), { op => 'pong', ref => 'end' },
          'ping at the end');
for my $c ($ann, $bob, $carl, $dan, $dan2, $dan3, $eve, $sann, $fay, $gus,
           $hal)
{
    ok(!$c->{masked}, $c->user . ': no masked frame from the server');
    $c->close;
}

$dbh->disconnect;

done_testing();
