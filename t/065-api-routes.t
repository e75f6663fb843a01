#!/usr/bin/perl
#
# 065-api-routes.t: the HTTP JSON API (collab_api; issue 6, docs/API.md),
# every route's success case and every kind of bad input.
#
# Each route is called as the right user and answers its status and the
# body docs/API.md shows (the WebSocket reply without "ref"); the tables
# are read with DBI to check what the route wrote.  Then bad inputs, each
# answered with its status and {"op":"error","code","message"} and
# writing nothing: no identity (401), a body that is not JSON or not an
# object, duplicate keys, wrong types (400), an unknown route (404), a
# wrong method (405), a wrong Content-Type (415), a message over
# collab_max_body_size or a body over client_body_buffer_size (413), too
# many messages (429, on a second nginx with a tiny collab_rate_messages),
# PostgreSQL down (503, last).  A message POSTed over HTTP reaches a
# WebSocket member live with the acked seq; the same clientMsgId POSTed
# again is answered with the same seq and duplicate:true and stores
# nothing; SQL-looking and non-ASCII bodies, titles and user ids are
# stored and returned byte for byte.
#
# worker_processes 1: live delivery is same-worker without Redis.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use IO::Select;
use IO::Socket::INET;
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
    RATE

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
            collab_max_body_size 1k;
            client_body_buffer_size 16k;
            client_max_body_size 1m;
        }

        location /noid/api/ {
            collab_api;
        }
    }
CONF

(my $main_conf = $conf) =~ s/PORT/%%PORT%%/;
$main_conf =~ s/ZONE/main/;
$main_conf =~ s/RATE/collab_rate_messages 1000r\/s burst=1000;/;
(my $rate_conf = $conf) =~ s/PORT/%%PORT2%%/;
$rate_conf =~ s/ZONE/rate/;
$rate_conf =~ s/RATE/collab_rate_messages 1r\/m burst=2;/;

$t->start_nginx($main_conf);
$t->start_nginx($rate_conf, name => 'rate');

my $dbh = $t->pg_dbh;

sub rows { $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]) }

sub sid { rows('SELECT id FROM chat_sessions WHERE slug = ?', $_[0]) }

my $ISO = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

# --- the HTTP client --------------------------------------------------------

my $API = Collab::Api->new($t);

# api($user, $method, $path, %o): one request to /collab/api$path as $user
# (undef: no X-User-Id), on a new connection (a request the module never
# finalizes cannot take the next one with it; keep-alive is checked on its
# own below).  %o: json => data (sent as application/json), raw => bytes,
# type => Content-Type, name => X-User-Name, port =>, prefix => (default
# /collab/api), headers => {...}.  Returns {status, json (decoded body or
# undef), body (bytes), type}.
sub api { $API->call(@_) }

# every row of every table the module writes
sub snapshot { db_snapshot($dbh) }

# answered($r, $status, $code, $why): an error reply with that status and
# code, as JSON, with a message and no "ref"
sub answered {
    my ($r, $status, $code, $why) = @_;
    my $j = $r->{json};
    my $ok = is($r->{status}, $status, "$why: $status");
    $ok &&= is(ref $j eq 'HASH' ? ($j->{op} // '') . ' ' . ($j->{code} // '')
                                : "(not JSON) $r->{body}",
               "error $code", "$why: error $code");
    $ok &&= like($r->{type}, qr{^application/json}, "$why: JSON");
    $ok &&= ok(length($j->{message} // '') && !exists $j->{ref},
               "$why: a message, no ref");
    diag(brief($r)) unless $ok;
    return $ok;
}

# refused($status, $code, $why, @api_args): answered so, and no table
# changed
sub refused {
    my ($status, $code, $why, @args) = @_;
    my $before = snapshot();
    my $r = api(@args);
    answered($r, $status, $code, $why);
    is_deeply(snapshot(), $before, "$why: the tables are unchanged");
    return $r;
}

# ok_reply($r, $status, $op, $why): a success with that status and op
sub ok_reply {
    my ($r, $status, $op, $why) = @_;
    my $ok = is("$r->{status} " . ($r->{json} ? $r->{json}{op} // '' : ''),
                "$status $op", "$why: $status $op");
    $ok &&= like($r->{type}, qr{^application/json}, "$why: JSON");
    $ok &&= ok(!exists $r->{json}{ref}, "$why: no ref");
    diag(brief($r)) unless $ok;
    return $r->{json} // {};
}


# --- identity ---------------------------------------------------------------

refused(401, 'UNAUTHORIZED', 'no X-User-Id', undef, GET => '/sessions');
refused(401, 'UNAUTHORIZED', 'an empty X-User-Id', '', GET => '/sessions');
refused(401, 'UNAUTHORIZED', 'a 257-byte user id', 'u' x 257,
        GET => '/sessions');
refused(401, 'UNAUTHORIZED', 'a POST without identity', undef,
        POST => '/sessions', json => { title => 'x' });
refused(401, 'UNAUTHORIZED', 'a location without collab_user', 'ann',
        GET => '/sessions', prefix => '/noid/api');


# --- sessions: create, list, read, update -----------------------------------

my $r = api('ann', GET => '/sessions', name => 'Ann');
my $j = ok_reply($r, 200, 'sessions', 'GET /sessions of a new user');
is_deeply($j->{sessions}, [], 'no sessions yet');
is(rows(q{SELECT display_name FROM users WHERE external_id = 'ann'}), 'Ann',
   'the caller is recorded with its name');

$r = api('ann', POST => '/sessions', name => 'Ann',
         json => { title => 'Plan', isPublic => \0, maxParticipants => 5 });
$j = ok_reply($r, 201, 'created', 'POST /sessions');
my $s = $j->{session} // {};
my $plan = $s->{id} // '';
like($plan, qr/^[A-Za-z0-9_-]{22}$/, 'a generated id');
is_deeply([@$s{qw(title type maxParticipants owner role lastSeq)}],
          ['Plan', 'text', 5, 'ann', 'owner', 0],
          'title, type, maxParticipants, owner, role, lastSeq');
ok(!$s->{isPublic}, 'private');
like($s->{createdAt} // '', $ISO, 'createdAt');
like($s->{lastActivity} // '', $ISO, 'lastActivity');
is_deeply($dbh->selectall_arrayref(
              q{SELECT s.title, s.is_public, s.max_participants,
                       u.external_id, p.role
                FROM chat_sessions s JOIN users u ON u.id = s.owner_id
                JOIN chat_participants p ON p.session_id = s.id
                WHERE s.slug = ?}, undef, $plan),
          [['Plan', 0, 5, 'ann', 'owner']],
          'the session row, and the owner as its participant');

$r = api('ann', GET => '/sessions');
$j = ok_reply($r, 200, 'sessions', 'GET /sessions');
is_deeply([map { $_->{id} } @{ $j->{sessions} // [] }], [$plan],
          'lists it');
is_deeply([map { $_->{role} } @{ $j->{sessions} // [] }], ['owner'],
          'with the caller\'s role');

$r = api('ann', POST => '/sessions', json => { title => 'Second' });
my $second = ok_reply($r, 201, 'created', 'a second session')->{session}{id};
$r = api('ann', GET => '/sessions?limit=1');
$j = ok_reply($r, 200, 'sessions', 'GET /sessions?limit=1');
is(scalar @{ $j->{sessions} // [] }, 1, 'limit=1: one session');

$r = api('ann', GET => "/sessions/$plan");
$j = ok_reply($r, 200, 'session', 'GET /sessions/{id}');
is_deeply($j->{session}, $s, 'the same session object as created');

$r = api('ann', PATCH => "/sessions/$plan",
         json => { title => 'Plan B', isPublic => \1,
                   maxParticipants => undef });
$j = ok_reply($r, 200, 'updated', 'PATCH /sessions/{id}');
is_deeply([@{ $j->{session} // {} }{qw(id title maxParticipants)}],
          [$plan, 'Plan B', undef], 'the session as updated');
ok($j->{session}{isPublic}, 'now public');
is_deeply($dbh->selectall_arrayref(
              'SELECT title, is_public, max_participants FROM chat_sessions
               WHERE slug = ?', undef, $plan),
          [['Plan B', 1, undef]], 'the row is updated');
$r = api('ann', PATCH => "/sessions/$plan",
         json => { isPublic => \0 });
ok_reply($r, 200, 'updated', 'PATCH back to private');

$r = api('ann', DELETE => "/sessions/$second");
$j = ok_reply($r, 200, 'deleted', 'DELETE /sessions/{id}');
is($j->{session}, $second, 'names the session');
is(rows('SELECT count(*) FROM chat_sessions WHERE slug = ?', $second), 0,
   'the row is gone');
refused(404, 'NOT_FOUND', 'GET of the deleted session', 'ann',
        GET => "/sessions/$second");
refused(404, 'NOT_FOUND', 'DELETE it again', 'ann',
        DELETE => "/sessions/$second");
refused(404, 'NOT_FOUND', 'PATCH of an unknown session', 'ann',
        PATCH => '/sessions/no-such-session', json => { title => 'x' });


# --- messages: post, read, page ---------------------------------------------

my $ws = Collab::Chat->open($t, user => 'ann', name => 'Ann');
$r = $ws->req(op => 'join', session => $plan);
is($r->{op}, 'joined', 'ann joins over the WebSocket') or diag(explain($r));

# no X-User-Name on this request: the event still names the user as stored
$r = api('ann', POST => "/sessions/$plan/messages",
         json => { body => 'hello over HTTP', clientMsgId => 'h1' });
$j = ok_reply($r, 201, 'ack', 'POST /sessions/{id}/messages');
is_deeply([@$j{qw(session clientMsgId seq)}], [$plan, 'h1', 1],
          'session, clientMsgId, seq 1');
ok(defined $j->{duplicate} && !$j->{duplicate}, 'duplicate: false');
like($j->{createdAt} // '', $ISO, 'createdAt');
my $ack1 = $j;

my ($ev) = $ws->events(1);
is_deeply($ev, { op => 'message', session => $plan, seq => 1, user => 'ann',
                 userName => 'Ann', kind => 'user',
                 body => 'hello over HTTP', clientMsgId => 'h1',
                 createdAt => $ack1->{createdAt} },
          'the WebSocket member receives it live, with the acked seq and '
          . 'the stored userName') or diag(explain($ev));

is_deeply($dbh->selectall_arrayref(
              'SELECT m.seq, u.external_id, m.body, m.client_msg_id
               FROM chat_messages m JOIN users u ON u.id = m.user_id
               WHERE m.session_id = ?', undef, sid($plan)),
          [[1, 'ann', 'hello over HTTP', 'h1']], 'the row');

# the same clientMsgId again: the original seq, nothing stored, no event
my $before = snapshot();
$r = api('ann', POST => "/sessions/$plan/messages",
         json => { body => 'a different body', clientMsgId => 'h1' });
$j = ok_reply($r, 201, 'ack', 'the same clientMsgId again');
is_deeply([@$j{qw(seq clientMsgId createdAt)}],
          [1, 'h1', $ack1->{createdAt}], 'the original seq and createdAt');
ok($j->{duplicate}, 'duplicate: true');
is_deeply(snapshot(), $before, 'nothing is stored');
ok(!$ws->take(sub { $_->{op} eq 'message' }, 0.5),
   'and no event is sent');

for my $i (2 .. 60) {
    $r = api('ann', POST => "/sessions/$plan/messages",
             json => { body => "m$i", clientMsgId => "h$i" });
    last unless is($r->{json} && $r->{json}{seq}, $i, "message $i: seq $i")
        || diag(brief($r));
}
my @ev = $ws->events(59);
is_deeply([map { $_->{seq} } @ev], [2 .. 60],
          'the member receives them live, in seq order');

$r = api('ann', GET => "/sessions/$plan/messages");
$j = ok_reply($r, 200, 'messages', 'GET /sessions/{id}/messages');
is($j->{session}, $plan, 'names the session');
is_deeply([map { $_->{seq} } @{ $j->{messages} // [] }], [11 .. 60],
          'the newest 50, oldest first');
ok($j->{more}, 'more: true');
is_deeply($j->{messages}[-1],
          { seq => 60, user => 'ann', userName => 'Ann', kind => 'user',
            body => 'm60', clientMsgId => 'h60',
            createdAt => $j->{messages}[-1]{createdAt} },
          'the message object');

$r = api('ann', GET => "/sessions/$plan/messages?before=11&limit=5");
$j = ok_reply($r, 200, 'messages', 'before=11&limit=5');
is_deeply([map { $_->{seq} } @{ $j->{messages} // [] }], [6 .. 10],
          'the 5 before seq 11');
ok($j->{more}, 'more: true');
$r = api('ann', GET => "/sessions/$plan/messages?before=3");
$j = ok_reply($r, 200, 'messages', 'before=3');
is_deeply([map { $_->{seq} } @{ $j->{messages} // [] }], [1, 2],
          'seq 1 and 2');
ok(!$j->{more}, 'more: false');
is($j->{messages}[0]{body}, 'hello over HTTP', 'the first body');
$r = api('ann', GET => "/sessions/$plan/messages?after=55&limit=3");
$j = ok_reply($r, 200, 'messages', 'after=55&limit=3');
is_deeply([map { $_->{seq} } @{ $j->{messages} // [] }], [56 .. 58],
          'the 3 after seq 55');
ok($j->{more}, 'more: true');
$r = api('ann', GET => "/sessions/$plan/messages?after=58");
$j = ok_reply($r, 200, 'messages', 'after=58');
is_deeply([map { $_->{seq} } @{ $j->{messages} // [] }], [59, 60],
          'the last two');
ok(!$j->{more}, 'more: false');
$r = api('ann', GET => "/sessions/$plan/messages?after=0&limit=200");
$j = ok_reply($r, 200, 'messages', 'after=0&limit=200');
is(scalar @{ $j->{messages} // [] }, 60, 'all 60');

# a "session" in the body does not redirect the post
$r = api('ann', POST => "/sessions/$plan/messages",
         json => { body => 'where?', clientMsgId => 'where',
                   session => 'elsewhere', op => 'delete' });
$j = ok_reply($r, 201, 'ack', 'a body naming another session and op');
is_deeply([@$j{qw(session seq)}], [$plan, 61],
          'stored in the session of the URL, as a message');
$ws->events(1);


# --- presence ---------------------------------------------------------------

$r = api('ann', GET => "/sessions/$plan/presence");
$j = ok_reply($r, 200, 'presence', 'GET /sessions/{id}/presence');
is($j->{session}, $plan, 'names the session');
is_deeply([map { [@$_{qw(user userName status)}] } @{ $j->{presence} // [] }],
          [['ann', 'Ann', 'online']],
          'ann is online (her WebSocket joined)');


# --- invitations over HTTP: invite -> accept -> send ------------------------

my $bobws = Collab::Chat->open($t, user => 'bob', name => 'Bob');
is($bobws->req(op => 'invitations')->{op}, 'invitations', 'bob connects');

$r = api('ann', POST => "/sessions/$plan/invitations",
         json => { user => 'bob' });
$j = ok_reply($r, 201, 'invited', 'POST /sessions/{id}/invitations');
my $inv = $j->{invitation} // {};
like($inv->{id} // '', qr/^\d+$/, 'an invitation id');
is_deeply([@$inv{qw(session title invitedBy invitee status)}],
          [$plan, 'Plan B', 'ann', 'bob', 'pending'],
          'session, title, invitedBy, invitee, status');
like($inv->{expiresAt} // '', $ISO, 'expiresAt');
$ev = $bobws->take(sub { $_->{op} eq 'invitation' });
is_deeply($ev, { op => 'invitation', invitation => $inv },
          "bob's WebSocket gets the invitation event");

$r = api('ann', GET => "/sessions/$plan/invitations");
$j = ok_reply($r, 200, 'invitations', 'GET /sessions/{id}/invitations');
is_deeply($j->{invitations}, [$inv], "the session's pending invitations");
$r = api('bob', GET => '/invitations');
$j = ok_reply($r, 200, 'invitations', 'GET /invitations');
is_deeply($j->{invitations}, [$inv], "bob's pending invitations");

$r = api('bob', POST => "/invitations/$inv->{id}/accept", json => {},
         name => 'Bob');
$j = ok_reply($r, 200, 'accepted', 'POST /invitations/{id}/accept');
is_deeply([@{ $j->{session} // {} }{qw(id role owner)}],
          [$plan, 'member', 'ann'], 'the session, bob as member');
$ev = $ws->take(sub { $_->{op} eq 'member' });
is_deeply($ev, { op => 'member', session => $plan, user => 'bob',
                 userName => 'Bob', action => 'joined' },
          "ann's WebSocket sees bob join");
is(rows(q{SELECT status FROM chat_invitations WHERE id = ?}, $inv->{id}),
   'accepted', 'the invitation row is accepted');

$r = api('bob', POST => "/sessions/$plan/messages", name => 'Bob',
         json => { body => 'thanks!', clientMsgId => 'b1' });
$j = ok_reply($r, 201, 'ack', 'bob posts over HTTP');
is($j->{seq}, 62, 'seq 62');
($ev) = $ws->events(1);
is_deeply([$ev && @$ev{qw(seq user userName body)}],
          [62, 'bob', 'Bob', 'thanks!'], 'ann receives it live');
$r = api('bob', GET => "/sessions/$plan/messages?limit=1");
is_deeply([map { $_->{body} } @{ $r->{json}{messages} // [] }], ['thanks!'],
          'bob reads the session');

# decline and revoke
for my $u (qw(carl dave)) {
    api($u, GET => '/invitations');
}
$r = api('ann', POST => "/sessions/$plan/invitations",
         json => { user => 'carl' });
my $cinv = ok_reply($r, 201, 'invited', 'carl is invited')->{invitation}{id};
$r = api('carl', POST => "/invitations/$cinv/decline", json => {});
$j = ok_reply($r, 200, 'declined', 'POST /invitations/{id}/decline');
is($j->{session}{id}, $plan, 'names the session');
is(rows('SELECT status FROM chat_invitations WHERE id = ?', $cinv),
   'declined', 'the row is declined');

$r = api('ann', POST => "/sessions/$plan/invitations",
         json => { user => 'dave' });
my $dinv = ok_reply($r, 201, 'invited', 'dave is invited')->{invitation}{id};
$r = api('ann', POST => "/invitations/$dinv/revoke", json => {});
$j = ok_reply($r, 200, 'revoked', 'POST /invitations/{id}/revoke');
is($j->{invitation}, $dinv, 'names the invitation');
is(rows('SELECT status FROM chat_invitations WHERE id = ?', $dinv),
   'revoked', 'the row is revoked');

# remove
$r = api('ann', DELETE => "/sessions/$plan/participants/bob");
$j = ok_reply($r, 200, 'removed',
              'DELETE /sessions/{id}/participants/{user}');
is($j->{session}, $plan, 'names the session');
is(rows(q{SELECT count(*) FROM chat_participants p JOIN users u
          ON u.id = p.user_id WHERE u.external_id = 'bob'
          AND p.session_id = ?}, sid($plan)), 0, 'bob is no participant');
$ev = $ws->take(sub { $_->{op} eq 'member' });
is_deeply($ev, { op => 'member', session => $plan, user => 'bob',
                 action => 'removed' }, "ann's WebSocket sees it");
refused(403, 'ACCESS_DENIED', 'the removed participant posts', 'bob',
        POST => "/sessions/$plan/messages",
        json => { body => 'x', clientMsgId => 'b2' });


# --- bad inputs -------------------------------------------------------------

my $P = "/sessions/$plan";
my $M = "$P/messages";

refused(400, 'BAD_REQUEST', 'a body that is not JSON', 'ann',
        POST => $M, type => 'application/json', raw => '{"body":');
refused(400, 'BAD_REQUEST', 'a JSON array', 'ann',
        POST => $M, type => 'application/json', raw => '["x"]');
refused(400, 'BAD_REQUEST', 'a JSON string', 'ann',
        POST => '/sessions', type => 'application/json', raw => '"x"');
refused(400, 'BAD_REQUEST', 'an empty body', 'ann',
        POST => '/sessions', type => 'application/json', raw => '');
refused(400, 'BAD_REQUEST', 'duplicate keys', 'ann',
        POST => $M, type => 'application/json',
        raw => '{"body":"a","body":"b","clientMsgId":"dk"}');
refused(400, 'BAD_REQUEST', 'a body that is a number', 'ann',
        POST => $M, json => { body => 5, clientMsgId => 'n1' });
refused(400, 'BAD_REQUEST', 'an empty body string', 'ann',
        POST => $M, json => { body => '', clientMsgId => 'n2' });
refused(400, 'BAD_REQUEST', 'no clientMsgId', 'ann',
        POST => $M, json => { body => 'x' });
refused(400, 'BAD_REQUEST', 'a numeric clientMsgId', 'ann',
        POST => $M, json => { body => 'x', clientMsgId => 7 });
refused(400, 'BAD_REQUEST', 'a clientMsgId of 129 characters', 'ann',
        POST => $M, json => { body => 'x', clientMsgId => 'c' x 129 });
refused(400, 'BAD_REQUEST', 'a body with \u0000', 'ann',
        POST => $M, type => 'application/json',
        raw => '{"body":"a\u0000b","clientMsgId":"z0"}');
refused(400, 'BAD_REQUEST', 'create without a title', 'ann',
        POST => '/sessions', json => { isPublic => \1 });
refused(400, 'BAD_REQUEST', 'create with a numeric title', 'ann',
        POST => '/sessions', json => { title => 42 });
refused(400, 'BAD_REQUEST', 'create with a blank title', 'ann',
        POST => '/sessions', json => { title => '   ' });
refused(400, 'BAD_REQUEST', 'create with a string maxParticipants', 'ann',
        POST => '/sessions', json => { title => 'x',
                                       maxParticipants => '5' });
refused(400, 'BAD_REQUEST', 'create with an unknown type', 'ann',
        POST => '/sessions', json => { title => 'x', type => 'video' });
refused(400, 'BAD_REQUEST', 'PATCH with a string isPublic', 'ann',
        PATCH => $P, json => { isPublic => 'yes' });
refused(400, 'BAD_REQUEST', 'invite with a numeric user', 'ann',
        POST => "$P/invitations", json => { user => 42 });
refused(400, 'BAD_REQUEST', 'invite without a user', 'ann',
        POST => "$P/invitations", json => {});
refused(400, 'BAD_REQUEST', 'a session id that is not a slug', 'ann',
        GET => "/sessions/bad'id/messages");
refused(400, 'BAD_REQUEST', 'limit=0', 'ann', GET => "$M?limit=0");
refused(400, 'BAD_REQUEST', 'limit=201', 'ann', GET => "$M?limit=201");
refused(400, 'BAD_REQUEST', 'limit=abc', 'ann', GET => "$M?limit=abc");
refused(400, 'BAD_REQUEST', 'after=-1', 'ann', GET => "$M?after=-1");
refused(400, 'BAD_REQUEST', 'before=abc', 'ann', GET => "$M?before=abc");
refused(400, 'BAD_REQUEST', 'before=0', 'ann', GET => "$M?before=0");

refused(404, 'NOT_FOUND', 'an unknown route', 'ann', GET => '/nothing');
refused(404, 'NOT_FOUND', 'the API root', 'ann', GET => '/');
refused(404, 'NOT_FOUND', 'an unknown sub-route', 'ann',
        GET => "$P/attachments");
refused(404, 'NOT_FOUND', 'a route too deep', 'ann',
        GET => "$M/1/2");
refused(404, 'NOT_FOUND', 'an unknown invitation action', 'ann',
        POST => "/invitations/$inv->{id}/approve", json => {});
refused(404, 'NOT_FOUND', 'an invitation id that is not a number', 'ann',
        POST => '/invitations/abc/accept', json => {});
refused(404, 'NOT_FOUND', 'messages of an unknown session', 'ann',
        GET => '/sessions/no-such-session/messages');

# each with the Allow header RFC 9110 asks of a 405
for my $case (
    ['PUT /sessions', 'GET, POST', PUT => '/sessions',
     json => { title => 'x' }],
    ['DELETE /sessions', 'GET, POST', DELETE => '/sessions'],
    ['POST /sessions/{id}', 'GET, PATCH, DELETE', POST => $P,
     json => { title => 'x' }],
    ['DELETE /sessions/{id}/messages', 'GET, POST', DELETE => $M],
    ['PATCH /sessions/{id}/invitations', 'GET, POST',
     PATCH => "$P/invitations", json => { user => 'x' }],
    ['POST /sessions/{id}/presence', 'GET', POST => "$P/presence",
     json => {}],
    ['GET /sessions/{id}/participants/{user}', 'DELETE',
     GET => "$P/participants/bob"],
    ['POST /invitations', 'GET', POST => '/invitations', json => {}],
    ['GET /invitations/{id}/accept', 'POST',
     GET => "/invitations/$inv->{id}/accept"],
    )
{
    my ($why, $allow, @req) = @$case;
    my $r = refused(405, 'BAD_REQUEST', $why, 'ann', @req);
    is($r->{allow}, $allow, "$why: Allow: $allow");
}

refused(415, 'BAD_REQUEST', 'POST without a Content-Type', 'ann',
        POST => $M, raw => '{"body":"x","clientMsgId":"t1"}');
refused(415, 'BAD_REQUEST', 'POST as text/plain', 'ann',
        POST => $M, type => 'text/plain',
        raw => '{"body":"x","clientMsgId":"t2"}');
refused(415, 'BAD_REQUEST', 'POST as a form', 'ann',
        POST => '/sessions', type => 'application/x-www-form-urlencoded',
        raw => 'title=x');
refused(415, 'BAD_REQUEST', 'PATCH as text/plain', 'ann',
        PATCH => $P, type => 'text/plain', raw => '{"title":"x"}');
$r = api('ann', POST => $M, type => 'application/json; charset=utf-8',
         raw => '{"body":"typed","clientMsgId":"t3"}');
ok_reply($r, 201, 'ack', 'application/json; charset=utf-8 is accepted');

# collab_max_body_size 1k: the message body; client_body_buffer_size 16k:
# a request body larger than what nginx keeps in memory
$r = api('ann', POST => $M, json => { body => 'x' x 1024,
                                      clientMsgId => 'big0' });
ok_reply($r, 201, 'ack', 'a body of exactly collab_max_body_size');
refused(413, 'TOO_LARGE', 'a body over collab_max_body_size', 'ann',
        POST => $M, json => { body => 'x' x 1025, clientMsgId => 'big1' });
refused(413, 'TOO_LARGE', 'a body of 1025 bytes of UTF-8', 'ann',
        POST => $M, json => { body => "\x{e9}" x 512 . 'x',
                              clientMsgId => 'big2' });
refused(413, 'TOO_LARGE', 'a request body nginx spools to a file (100 KB, '
        . 'client_body_buffer_size 16k)', 'ann', POST => $M,
        json => { body => 'x', clientMsgId => 'big3', pad => 'p' x 100000 });


# --- keep-alive: every answer finalizes its request -------------------------

# keepalive($why, $req1): $req1 then GET /sessions on one connection; both
# are answered
sub keepalive {
    my ($why, $first) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port, Proto => 'tcp',
                                  Timeout => 5) or die "connect: $!";
    binmode $s;
    my $buf = '';
    my $response = sub {
        my $end = time + 5;
        my $sel = IO::Select->new($s);
        while (1) {
            my $h = index($buf, "\r\n\r\n");
            if ($h >= 0) {
                my $head = substr($buf, 0, $h);
                my ($status) = $head =~ m{^HTTP/1\.1 (\d+)};
                my ($len) = $head =~ /^Content-Length: *(\d+)/mi;
                $len //= 0;
                if (length($buf) >= $h + 4 + $len) {
                    substr($buf, 0, $h + 4 + $len, '');
                    return $status // 'none';
                }
            }
            my $left = $end - time;
            last if $left <= 0 || !$sel->can_read($left);
            sysread($s, $buf, 65536, length $buf) or last;
        }
        return 'none';
    };
    my $get = "GET /collab/api/sessions HTTP/1.1\r\nHost: x\r\n"
              . "X-User-Id: ann\r\n\r\n";
    print $s $first;
    my $st1 = $response->();
    print $s $get;
    my $st2 = $response->();
    close $s;
    is("$st1 $st2", (split ' ', $why)[0] . ' 200',
       "keep-alive after $why: the next request is answered");
}

keepalive('200 GET /sessions', "GET /collab/api/sessions HTTP/1.1\r\n"
          . "Host: x\r\nX-User-Id: ann\r\n\r\n");
keepalive('403 from the access check',
          "GET /collab/api/sessions/$plan HTTP/1.1\r\nHost: x\r\n"
          . "X-User-Id: eve\r\n\r\n");
keepalive('404 of an unknown route (GET)',
          "GET /collab/api/nothing HTTP/1.1\r\nHost: x\r\n"
          . "X-User-Id: ann\r\n\r\n");
keepalive('405 of DELETE /sessions',
          "DELETE /collab/api/sessions HTTP/1.1\r\nHost: x\r\n"
          . "X-User-Id: ann\r\n\r\n");
keepalive('405 of a POST with a JSON body',
          "POST /collab/api/sessions/$plan HTTP/1.1\r\nHost: x\r\n"
          . "X-User-Id: ann\r\nContent-Type: application/json\r\n"
          . "Content-Length: 2\r\n\r\n{}");
keepalive('415 of a text/plain POST',
          "POST /collab/api/sessions HTTP/1.1\r\nHost: x\r\n"
          . "X-User-Id: ann\r\nContent-Type: text/plain\r\n"
          . "Content-Length: 2\r\n\r\n{}");


# --- user ids with "%" and "/" in the participants route --------------------

for my $u ('50%41off', 'team/a') {
    api($u, GET => '/invitations');
    $r = api('ann', POST => "$P/invitations", json => { user => $u });
    my $id = ok_reply($r, 201, 'invited', "'$u' is invited")
                 ->{invitation}{id} // 0;
    ok_reply(api($u, POST => "/invitations/$id/accept", json => {}),
             200, 'accepted', "'$u' accepts");
    $r = api('ann', DELETE => "$P/participants/" . url_escape($u));
    ok_reply($r, 200, 'removed', "'$u' is removed by the URL-escaped id "
             . url_escape($u));
    is(rows(q{SELECT count(*) FROM chat_participants p JOIN users u
              ON u.id = p.user_id WHERE u.external_id = ?
              AND p.session_id = ?}, $u, sid($plan)), 0,
       "'$u' is no participant");
}


# --- SQL-looking and non-ASCII input, byte for byte -------------------------

my @strings = (
    q{Robert'); DROP TABLE chat_messages; --},
    "na\x{ef}ve caf\x{e9} \x{65e5}\x{672c}\x{8a9e} \x{1F600} \x{202E}rtl",
    qq{{"x",NULL} \\ %s \$1 ::text \\x00 "quoted" \n\ttab},
);
$ws->drain_events(0.3);
for my $i (0 .. $#strings) {
    my $seq = rows('SELECT last_seq FROM chat_sessions WHERE slug = ?',
                   $plan);
    my $str = $strings[$i];
    my $cmid = "$str/$i";
    $r = api('ann', POST => $M, json => { body => $str,
                                          clientMsgId => $cmid });
    $j = ok_reply($r, 201, 'ack', "string $i: posted");
    is($j->{clientMsgId}, $cmid, "string $i: the ack's clientMsgId");
    $seq++;
    is($j->{seq}, $seq, "string $i: the next seq");
    $ev = $ws->take(sub { $_->{op} eq 'message'
                          && ($_->{clientMsgId} // '') eq $cmid });
    is_deeply([$ev && @$ev{qw(seq body clientMsgId)}], [$seq, $str, $cmid],
              "string $i: the live event, byte for byte");
    $r = api('ann', GET => "$M?after=" . ($seq - 1));
    is_deeply([map { [$_->{body}, $_->{clientMsgId}] }
               @{ $r->{json}{messages} // [] }], [[$str, $cmid]],
              "string $i: read back byte for byte");
    is_deeply($dbh->selectall_arrayref(
                  'SELECT body, client_msg_id FROM chat_messages
                   WHERE session_id = ? AND seq = ?', undef, sid($plan),
                  $seq),
              [[$str, $cmid]], "string $i: the table, byte for byte");

    # as a title, and as a user id (header, URL-escaped in the route)
    my $title = substr($str, 0, 200);
    $r = api('ann', POST => '/sessions', json => { title => $title });
    my $slug = ok_reply($r, 201, 'created', "string $i: a session titled so")
                   ->{session}{id} // '';
    is($r->{json}{session}{title}, $title, "string $i: the title back");
    is(rows('SELECT title FROM chat_sessions WHERE slug = ?', $slug),
       $title, "string $i: the title in the table");

    (my $u = "$str-$i") =~ s/[\r\n\t]/ /g;         # a header value
    $r = api($u, GET => '/invitations', name => $u);
    ok_reply($r, 200, 'invitations', "string $i: a user so named calls");
    $r = api('ann', POST => "/sessions/$slug/invitations",
             json => { user => $u });
    $j = ok_reply($r, 201, 'invited', "string $i: ann invites that user");
    is($j->{invitation}{invitee}, $u, "string $i: the invitee as given");
    $r = api($u, POST => "/invitations/$j->{invitation}{id}/accept",
             json => {});
    ok_reply($r, 200, 'accepted', "string $i: the user accepts");
    $r = api($u, POST => "/sessions/$slug/messages",
             json => { body => $str, clientMsgId => 'x' });
    ok_reply($r, 201, 'ack', "string $i: and posts");
    $r = api('ann', GET => "/sessions/$slug/messages");
    is_deeply([map { [@$_{qw(user userName body)}] }
               @{ $r->{json}{messages} // [] }], [[$u, $u, $str]],
              "string $i: user, name and body back, byte for byte");
    my $esc = url_escape(do { my $b = $u; utf8::encode($b); $b });
    $r = api('ann', DELETE => "/sessions/$slug/participants/$esc");
    ok_reply($r, 200, 'removed',
             "string $i: removed by the URL-escaped id");
    is(rows('SELECT count(*) FROM chat_participants p JOIN chat_sessions s
             ON s.id = p.session_id WHERE s.slug = ?', $slug), 1,
       "string $i: only the owner is left");
}


# --- 429: collab_rate_messages 1r/m burst=2 on the "rate" instance ----------

my $port2 = $t->port(2);
$r = api('rita', POST => '/sessions', port => $port2,
         json => { title => 'Rated' });
my $rated = ok_reply($r, 201, 'created', 'rita creates a session')
                ->{session}{id} // '';
my ($n201, $got429) = (0, undef);
for my $i (1 .. 10) {
    $r = api('rita', POST => "/sessions/$rated/messages", port => $port2,
             json => { body => "r$i", clientMsgId => "r$i" });
    if ($r->{status} == 429) {
        $got429 = $r;
        last;
    }
    $n201++ if $r->{status} == 201;
}
ok($got429, 'posting faster than collab_rate_messages is refused');
if ($got429) {
    answered($got429, 429, 'RATE_LIMITED', 'over the rate');
    like($got429->{json}{retryAfter} // '', qr/^[1-9]\d*$/,
         'with retryAfter (ms)');
}
is(rows('SELECT count(*) FROM chat_messages m JOIN chat_sessions s
         ON s.id = m.session_id WHERE s.slug = ?', $rated), $n201,
   'only the accepted posts are stored');


# --- 503: PostgreSQL down (last) --------------------------------------------

$ws->close;
$bobws->close;
$dbh->disconnect;
$t->stop_pg;

$r = api('ann', GET => '/sessions');
answered($r, 503, 'UNAVAILABLE', 'GET /sessions with PostgreSQL down');
$r = api('ann', POST => $M, json => { body => 'x', clientMsgId => 'down' });
answered($r, 503, 'UNAVAILABLE', 'POST a message with PostgreSQL down');

done_testing();
