#!/usr/bin/perl
#
# 065-api-access.t: who may do what through the HTTP JSON API (collab_api;
# issue 6 "Access rules", "Invitations", "HTTP JSON API").
#
# Every rule is tried over HTTP from the wrong user: a non-participant of
# a private session (read the session, its messages, its presence, post),
# a non-owner, both a stranger and a member (PATCH, DELETE, invite, list
# the session's invitations, revoke, remove), an invitee before accepting,
# someone else's invitation (accept, decline), a removed participant, an
# expired invitation (a second nginx with collab_invite_ttl 2s), a full
# session (accept into it, a stranger reading a full public one).  Each
# gets its exact status and code AND leaves every table as it was: the
# test compares a full dump of users, chat_sessions, chat_participants,
# chat_invitations and chat_messages before and after.  Then the whole
# invite -> accept -> post flow over HTTP, with the owner and the invitee
# on WebSockets receiving the invitation, member and message events live.
#
# Every user calls once before the refusals (GET /invitations), so the
# users table holds them all: a first call creates the user's row, which
# is the one change a refused request may not hide.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Mojo::Util qw(url_escape);
use Collab::Test;
use Collab::Chat;
use Collab::Api qw(brief db_snapshot);

binmode(Test::More->builder->$_, ':encoding(UTF-8)')
    for qw(output failure_output todo_output);

my $t = Collab::Test->new;
$t->start_pg;

my $conf = <<'CONF';
    collab_postgres "%%PG_DSN%%" pool=2 timeout=10s;
    collab_batch_window 2ms;
    collab_zone collab_ZONE 4m;
    collab_invite_ttl TTL;

    server {
        listen 127.0.0.1:PORT;

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
            collab_user_name $http_x_user_name;
        }

        location /collab/api/ {
            collab_api;
            collab_user $http_x_user_id;
            collab_user_name $http_x_user_name;
        }
    }
CONF

(my $main_conf = $conf) =~ s/TTL/1h/;
$main_conf =~ s/PORT/%%PORT%%/;
$main_conf =~ s/ZONE/main/;
(my $short_conf = $conf) =~ s/TTL/2s/;
$short_conf =~ s/PORT/%%PORT2%%/;
$short_conf =~ s/ZONE/short/;

$t->start_nginx($main_conf);
$t->start_nginx($short_conf, name => 'short');

my $dbh = $t->pg_dbh;

sub rows { $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]) }

sub uid { rows('SELECT id FROM users WHERE external_id = ?', $_[0]) }

sub sid { rows('SELECT id FROM chat_sessions WHERE slug = ?', $_[0]) }

sub participant {
    my ($slug, $user) = @_;
    return rows('SELECT count(*) FROM chat_participants
                 WHERE session_id = ? AND user_id = ?', sid($slug),
                uid($user));
}

my $ISO = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

# --- the HTTP client --------------------------------------------------------

my $API = Collab::Api->new($t);

# api($user, $method, $path, %o): one request to /collab/api$path as $user;
# json => data (a POST/PATCH body; {} when omitted), port => (default the
# main instance), name => X-User-Name.  Returns {status, json, body}.
sub api {
    my ($user, $method, $path, %o) = @_;
    $o{json} //= {} if $method eq 'POST' || $method eq 'PATCH';
    return $API->call($user, $method, $path, %o);
}

# "STATUS OP" or "STATUS error CODE"
sub outcome {
    my ($r) = @_;
    my $j = $r->{json};
    return "$r->{status} (not JSON)" unless ref $j eq 'HASH';
    return "$r->{status} " . ($j->{op} // '')
           . ($j->{op} && $j->{op} eq 'error' ? " $j->{code}" : '');
}

# every row of every table the module writes
sub snapshot { db_snapshot($dbh) }

my %STATUS = (ACCESS_DENIED => 403, NOT_FOUND => 404, CONFLICT => 409,
              BAD_REQUEST => 400);

# refused($code, $why, @api_args): the error's status and code, and no
# table changed
sub refused {
    my ($code, $why, @args) = @_;
    my $before = snapshot();
    my $r = api(@args);
    is(outcome($r), "$STATUS{$code} error $code", "$why: $code")
        or diag(brief($r));
    is_deeply(snapshot(), $before, "$why: the tables are unchanged");
    return $r;
}

# done($status, $op, $why, @api_args): the call succeeds so
sub done {
    my ($status, $op, $why, @args) = @_;
    my $r = api(@args);
    is(outcome($r), "$status $op", "$why: $status $op") or diag(brief($r));
    return $r->{json} // {};
}

sub event {
    my ($c, $op, $timeout) = @_;
    return $c->take(sub { $_->{op} eq $op }, $timeout // 10);
}

sub no_event {
    my ($c, $op, $why, $wait) = @_;
    my $e = $c->take(sub { $_->{op} eq $op }, $wait // 0.5);
    ok(!$e, $why) or diag(explain($e));
}


# --- the cast ---------------------------------------------------------------

for my $u (qw(ann bob carl dan eve)) {
    done(200, 'invitations', "$u calls once", $u, GET => '/invitations',
         name => ucfirst $u);
}

my $annws = Collab::Chat->open($t, user => 'ann', name => 'Ann');
my $bobws = Collab::Chat->open($t, user => 'bob', name => 'Bob');
my $evews = Collab::Chat->open($t, user => 'eve', name => 'Eve');
is($_->req(op => 'invitations')->{op}, 'invitations', $_->user
   . "'s WebSocket is up") for $annws, $bobws, $evews;

my $j = done(201, 'created', 'ann creates a private session',
             'ann', POST => '/sessions', json => { title => 'Plan' });
my $plan = $j->{session}{id} // '';
is($annws->req(op => 'join', session => $plan)->{op}, 'joined',
   "ann's WebSocket joins it");
done(201, 'ack', 'ann posts', 'ann', POST => "/sessions/$plan/messages",
     json => { body => 'first', clientMsgId => 'a1' });
ok(event($annws, 'message'), "ann's WebSocket receives it");
my $P = "/sessions/$plan";
my $M = "$P/messages";


# --- a non-participant of a private session ---------------------------------

refused('ACCESS_DENIED', 'a stranger reads the session', 'eve', GET => $P);
refused('ACCESS_DENIED', 'a stranger reads its messages', 'eve', GET => $M);
refused('ACCESS_DENIED', 'a stranger reads its messages after=0', 'eve',
        GET => "$M?after=0");
refused('ACCESS_DENIED', 'a stranger posts into it', 'eve', POST => $M,
        json => { body => 'hi', clientMsgId => 'e1' });
refused('ACCESS_DENIED', 'a stranger reads its presence', 'eve',
        GET => "$P/presence");
refused('NOT_FOUND', 'an unknown session', 'eve',
        GET => '/sessions/no-such-session');
refused('NOT_FOUND', 'a post into an unknown session', 'eve',
        POST => '/sessions/no-such-session/messages',
        json => { body => 'hi', clientMsgId => 'e2' });
no_event($annws, 'message', 'no message reaches the session', 0.3);


# --- the owner's rights, from a stranger ------------------------------------

refused('ACCESS_DENIED', 'a stranger renames the session', 'eve',
        PATCH => $P, json => { title => 'mine' });
refused('ACCESS_DENIED', 'a stranger makes it public', 'eve',
        PATCH => $P, json => { isPublic => \1 });
refused('ACCESS_DENIED', 'a stranger deletes it', 'eve', DELETE => $P);
refused('ACCESS_DENIED', 'a stranger invites', 'eve',
        POST => "$P/invitations", json => { user => 'bob' });
refused('ACCESS_DENIED', 'a stranger invites a new user', 'eve',
        POST => "$P/invitations", json => { user => 'nobody-1' });
refused('ACCESS_DENIED', "a stranger lists the session's invitations",
        'eve', GET => "$P/invitations");
refused('ACCESS_DENIED', 'a stranger removes the owner... or anyone',
        'eve', DELETE => "$P/participants/ann");
no_event($bobws, 'invitation', 'no invitation reaches bob', 0.3);


# --- invite; the invitee before accepting -----------------------------------

$j = done(201, 'invited', 'the owner invites bob', 'ann',
          POST => "$P/invitations", json => { user => 'bob' });
my $inv = $j->{invitation} // {};
is_deeply([@$inv{qw(session invitedBy invitee status)}],
          [$plan, 'ann', 'bob', 'pending'], 'the invitation');
my $ev = event($bobws, 'invitation');
is_deeply($ev, { op => 'invitation', invitation => $inv },
          "bob's WebSocket receives it at once");
is(rows(q{SELECT round(extract(epoch FROM expires_at - created_at))
          FROM chat_invitations WHERE id = ?}, $inv->{id}), 3600,
   'it expires collab_invite_ttl (1h) after its creation');
refused('CONFLICT', 'invite bob again while pending', 'ann',
        POST => "$P/invitations", json => { user => 'bob' });
refused('BAD_REQUEST', 'the owner invites herself', 'ann',
        POST => "$P/invitations", json => { user => 'ann' });

refused('ACCESS_DENIED', 'the invitee reads the session', 'bob', GET => $P);
refused('ACCESS_DENIED', 'the invitee reads its messages', 'bob',
        GET => $M);
refused('ACCESS_DENIED', 'the invitee posts', 'bob', POST => $M,
        json => { body => 'early', clientMsgId => 'b0' });
refused('ACCESS_DENIED', 'the invitee reads its presence', 'bob',
        GET => "$P/presence");
refused('ACCESS_DENIED', "the invitee lists the session's invitations",
        'bob', GET => "$P/invitations");
refused('ACCESS_DENIED', 'the invitee invites', 'bob',
        POST => "$P/invitations", json => { user => 'carl' });
is(participant($plan, 'bob'), 0, 'an invitation makes no participant');

refused('NOT_FOUND', "a stranger accepts bob's invitation", 'eve',
        POST => "/invitations/$inv->{id}/accept");
refused('NOT_FOUND', "a stranger declines it", 'eve',
        POST => "/invitations/$inv->{id}/decline");
refused('NOT_FOUND', "the owner accepts it", 'ann',
        POST => "/invitations/$inv->{id}/accept");
refused('NOT_FOUND', 'accept of an invitation that does not exist', 'bob',
        POST => '/invitations/' . ($inv->{id} + 1000) . '/accept');
refused('ACCESS_DENIED', "the invitee revokes", 'bob',
        POST => "/invitations/$inv->{id}/revoke");
refused('ACCESS_DENIED', "a stranger revokes", 'eve',
        POST => "/invitations/$inv->{id}/revoke");
$j = done(200, 'invitations', "bob's invitations", 'bob',
          GET => '/invitations');
is_deeply($j->{invitations}, [$inv], 'list it');
$j = done(200, 'invitations', "the owner's list of the session's", 'ann',
          GET => "$P/invitations");
is_deeply($j->{invitations}, [$inv], 'lists it');


# --- accept -> member -> post, over HTTP ------------------------------------

$j = done(200, 'accepted', 'bob accepts', 'bob',
          POST => "/invitations/$inv->{id}/accept", name => 'Bob');
is_deeply([@{ $j->{session} // {} }{qw(id role owner)}],
          [$plan, 'member', 'ann'], 'a member of the session');
$ev = event($annws, 'member');
is_deeply($ev, { op => 'member', session => $plan, user => 'bob',
                 userName => 'Bob', action => 'joined' },
          "ann's WebSocket sees bob join");
is(participant($plan, 'bob'), 1, 'bob is a participant');
is(rows('SELECT status FROM chat_invitations WHERE id = ?', $inv->{id}),
   'accepted', 'the invitation is accepted');

$j = done(200, 'messages', 'bob reads the messages', 'bob', GET => $M);
is_deeply([map { $_->{body} } @{ $j->{messages} // [] }], ['first'],
          'what was said before');
$j = done(201, 'ack', 'bob posts', 'bob', POST => $M, name => 'Bob',
          json => { body => 'hello from bob', clientMsgId => 'b1' });
is($j->{seq}, 2, 'seq 2');
$ev = event($annws, 'message');
is_deeply([$ev && @$ev{qw(seq user userName body)}],
          [2, 'bob', 'Bob', 'hello from bob'],
          "ann's WebSocket receives it live");
is($bobws->req(op => 'join', session => $plan)->{op}, 'joined',
   "bob's WebSocket joins");
$j = done(201, 'ack', 'ann posts over HTTP', 'ann', POST => $M,
          name => 'Ann', json => { body => 'hi bob', clientMsgId => 'a2' });
$ev = event($bobws, 'message');
is_deeply([$ev && @$ev{qw(seq user body)}], [3, 'ann', 'hi bob'],
          "bob's WebSocket receives it live");
event($annws, 'message');
$j = done(200, 'presence', 'bob reads the presence', 'bob',
          GET => "$P/presence");
is_deeply([sort map { $_->{user} } @{ $j->{presence} // [] }],
          [qw(ann bob)], 'ann and bob are online');

refused('CONFLICT', 'accept the same invitation twice', 'bob',
        POST => "/invitations/$inv->{id}/accept");
refused('CONFLICT', 'decline an accepted invitation', 'bob',
        POST => "/invitations/$inv->{id}/decline");
refused('CONFLICT', 'revoke an accepted invitation', 'ann',
        POST => "/invitations/$inv->{id}/revoke");
refused('CONFLICT', 'invite a participant', 'ann',
        POST => "$P/invitations", json => { user => 'bob' });


# --- the owner's rights, from a member --------------------------------------

refused('ACCESS_DENIED', 'a member renames the session', 'bob',
        PATCH => $P, json => { title => 'ours' });
refused('ACCESS_DENIED', 'a member deletes it', 'bob', DELETE => $P);
refused('ACCESS_DENIED', 'a member invites', 'bob',
        POST => "$P/invitations", json => { user => 'carl' });
refused('ACCESS_DENIED', "a member lists the session's invitations",
        'bob', GET => "$P/invitations");
refused('ACCESS_DENIED', 'a member removes the owner', 'bob',
        DELETE => "$P/participants/ann");
refused('ACCESS_DENIED', 'a member removes himself', 'bob',
        DELETE => "$P/participants/bob");
refused('BAD_REQUEST', 'the owner removes herself', 'ann',
        DELETE => "$P/participants/ann");
refused('NOT_FOUND', 'the owner removes a non-participant', 'ann',
        DELETE => "$P/participants/eve");
refused('NOT_FOUND', 'the owner removes an unknown user', 'ann',
        DELETE => "$P/participants/nobody-2");

# decline and revoke by the right users
$j = done(201, 'invited', 'carl is invited', 'ann',
          POST => "$P/invitations", json => { user => 'carl' });
my $cinv = $j->{invitation}{id};
refused('ACCESS_DENIED', "a member revokes carl's invitation", 'bob',
        POST => "/invitations/$cinv/revoke");
done(200, 'declined', 'carl declines', 'carl',
     POST => "/invitations/$cinv/decline");
refused('CONFLICT', 'accept after declining', 'carl',
        POST => "/invitations/$cinv/accept");
refused('ACCESS_DENIED', 'carl reads after declining', 'carl', GET => $M);
$j = done(201, 'invited', 'dan is invited', 'ann',
          POST => "$P/invitations", json => { user => 'dan' });
my $dinv = $j->{invitation}{id};
done(200, 'revoked', 'the owner revokes it', 'ann',
     POST => "/invitations/$dinv/revoke");
refused('CONFLICT', 'accept a revoked invitation', 'dan',
        POST => "/invitations/$dinv/accept");
refused('ACCESS_DENIED', 'dan reads after the revoke', 'dan', GET => $M);


# --- a removed participant --------------------------------------------------

done(200, 'removed', 'the owner removes bob', 'ann',
     DELETE => "$P/participants/bob");
$ev = event($annws, 'member');
is_deeply($ev, { op => 'member', session => $plan, user => 'bob',
                 action => 'removed' }, "ann's WebSocket is told");
is(participant($plan, 'bob'), 0, "bob's participant row is gone");
done(201, 'ack', 'ann posts after the removal', 'ann', POST => $M,
     json => { body => 'after bob', clientMsgId => 'a3' });
no_event($bobws, 'message', "bob's WebSocket left the session at once");
refused('ACCESS_DENIED', 'the removed participant reads the session', 'bob',
        GET => $P);
refused('ACCESS_DENIED', 'the removed participant reads messages', 'bob',
        GET => $M);
refused('ACCESS_DENIED', 'the removed participant posts', 'bob',
        POST => $M, json => { body => 'still here?', clientMsgId => 'b2' });
refused('ACCESS_DENIED', 'the removed participant reads presence', 'bob',
        GET => "$P/presence");
refused('CONFLICT', 'his accepted invitation cannot be reused', 'bob',
        POST => "/invitations/$inv->{id}/accept");
refused('NOT_FOUND', 'remove him again', 'ann',
        DELETE => "$P/participants/bob");


# --- full sessions ----------------------------------------------------------

$j = done(201, 'created', 'a private session of 2', 'ann',
          POST => '/sessions', json => { title => 'Small',
                                         maxParticipants => 2 });
my $small = $j->{session}{id};
my %sinv;
for my $u (qw(bob carl)) {
    $j = done(201, 'invited', "$u is invited into it", 'ann',
              POST => "/sessions/$small/invitations", json => { user => $u });
    $sinv{$u} = $j->{invitation}{id};
}
done(200, 'accepted', 'bob accepts: it is full', 'bob',
     POST => "/invitations/$sinv{bob}/accept");
refused('CONFLICT', 'accept into a full private session', 'carl',
        POST => "/invitations/$sinv{carl}/accept");
is(rows('SELECT status FROM chat_invitations WHERE id = ?', $sinv{carl}),
   'pending', 'the invitation stays pending');
refused('ACCESS_DENIED', 'carl reads the full private session', 'carl',
        GET => "/sessions/$small/messages");

$j = done(201, 'created', 'a public session of 2', 'ann',
          POST => '/sessions', json => { title => 'Open', isPublic => \1,
                                         maxParticipants => 2 });
my $open = $j->{session}{id};
$j = done(200, 'messages', 'bob reads the public session: a participant',
          'bob', GET => "/sessions/$open/messages");
is(participant($open, 'bob'), 1, 'bob is its participant now (it is full)');
refused('CONFLICT', 'a stranger reads the full public session', 'eve',
        GET => "/sessions/$open");
refused('CONFLICT', 'a stranger reads its messages', 'eve',
        GET => "/sessions/$open/messages");
refused('CONFLICT', 'a stranger posts into it', 'eve',
        POST => "/sessions/$open/messages",
        json => { body => 'x', clientMsgId => 'e3' });
$j = done(201, 'invited', 'eve is invited into it', 'ann',
          POST => "/sessions/$open/invitations", json => { user => 'eve' });
refused('CONFLICT', 'accept into a full public session', 'eve',
        POST => "/invitations/$j->{invitation}{id}/accept");
done(201, 'ack', 'a participant still posts into the full session', 'bob',
     POST => "/sessions/$open/messages",
     json => { body => 'full', clientMsgId => 'b3' });

$j = done(200, 'updated', 'the owner raises the limit', 'ann',
          PATCH => "/sessions/$small", json => { maxParticipants => 3 });
is($j->{session}{maxParticipants}, 3, 'to 3');
done(200, 'accepted', 'now carl may accept', 'carl',
     POST => "/invitations/$sinv{carl}/accept");
done(200, 'messages', 'and read', 'carl', GET => "/sessions/$small/messages");


# --- expired invitations (the "short" instance: collab_invite_ttl 2s) -------

my $port2 = $t->port(2);
$j = done(201, 'invited', 'eve is invited into Plan (ttl 2s)', 'ann',
          POST => "$P/invitations", json => { user => 'eve' },
          port => $port2);
my $einv = $j->{invitation};
is(rows(q{SELECT round(extract(epoch FROM expires_at - created_at))
          FROM chat_invitations WHERE id = ?}, $einv->{id}), 2,
   'it expires 2s after its creation');
$j = done(201, 'invited', 'dan is invited into Plan (ttl 2s)', 'ann',
          POST => "$P/invitations", json => { user => 'dan' },
          port => $port2);
my $dinv2 = $j->{invitation};

# wait until PostgreSQL's clock is past both expiries
my $end = time + 10;
sleep 0.25 while time < $end
    && rows(q{SELECT count(*) FROM chat_invitations
              WHERE id IN (?, ?) AND expires_at > now()},
            $einv->{id}, $dinv2->{id});

$j = done(200, 'invitations', "eve's invitations after the expiry", 'eve',
          GET => '/invitations');
is_deeply([grep { $_->{id} == $einv->{id} } @{ $j->{invitations} // [] }],
          [], 'do not list the expired one');

my $before = snapshot();
my $r = api('eve', POST => "/invitations/$einv->{id}/accept");
is(outcome($r), '409 error CONFLICT', 'accept after expiry: 409 CONFLICT')
    or diag(brief($r));
my ($row) = grep { $_->{id} == $einv->{id} }
            @{ $before->{chat_invitations} };
$row->{status} = 'expired';
is_deeply(snapshot(), $before,
          'the invitation is marked expired; nothing else changed');
refused('CONFLICT', 'accept after expiry, again', 'eve',
        POST => "/invitations/$einv->{id}/accept");
refused('ACCESS_DENIED', 'eve reads the session', 'eve', GET => $M);
refused('CONFLICT', 'revoke of an expired invitation', 'ann',
        POST => "/invitations/$einv->{id}/revoke");

$before = snapshot();
$r = api('dan', POST => "/invitations/$dinv2->{id}/decline");
is(outcome($r), '409 error CONFLICT', 'decline after expiry: 409 CONFLICT')
    or diag(brief($r));
($row) = grep { $_->{id} == $dinv2->{id} } @{ $before->{chat_invitations} };
$row->{status} = 'expired';
is_deeply(snapshot(), $before, 'marked expired; nothing else changed');


# --- delete -----------------------------------------------------------------

my $plan_id = sid($plan);
$before = snapshot();
$j = done(200, 'deleted', 'the owner deletes Plan', 'ann', DELETE => $P);
is($j->{session}, $plan, 'names it');
$ev = event($annws, 'deleted');
is_deeply($ev, { op => 'deleted', session => $plan },
          "ann's joined WebSocket is told");
my $after = snapshot();
for my $table (qw(chat_participants chat_invitations chat_messages)) {
    is_deeply($after->{$table},
              [grep { $_->{session_id} != $plan_id }
               @{ $before->{$table} }],
              "$table: only the session's rows are gone");
}
is_deeply($after->{users}, $before->{users}, 'users: unchanged');
refused('NOT_FOUND', 'read the deleted session', 'ann', GET => $M);
refused('NOT_FOUND', 'delete it again', 'ann', DELETE => $P);

$_->close for $annws, $bobws, $evews;
$dbh->disconnect;

done_testing();
