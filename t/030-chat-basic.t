#!/usr/bin/perl
#
# 030-chat-basic.t: the collab.v1 chat ops end to end (issue 3).
#
# create -> join -> send -> the other connections receive the events in
# seq order; acks after COMMIT with seq 1..N; duplicates of a clientMsgId
# (resent, twice in one batch, racing from two tabs) store one row;
# bodies that look like SQL or array literals, or are not ASCII, come back
# byte for byte; history paging; join without since; sessions ordering;
# leave.  Every step is checked against the tables with DBI as well as
# against the replies.
#
# Why: this is the product's contract (docs/PROTOCOL.md); the database is
# the source of truth, so the test reads it rather than trusting replies.
# worker_processes 1: delivery is same-worker until the Redis relay.

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

$t->start_nginx(<<'CONF');
    collab_postgres "%%PG_DSN%%" pool=2 timeout=10s;
    collab_batch_window 2ms;
    collab_join_history 20;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
            collab_user_name $http_x_user_name;
            collab_send_queue_size 4m;
        }

        location /nouser {
            collab_websocket;
        }
    }
CONF

my $dbh = $t->pg_dbh;

sub rows { $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]) }

sub err_code { $_[0]{op} eq 'error' ? $_[0]{code} : "(op $_[0]{op})" }


# --- identity: no user, no upgrade ------------------------------------------

for my $case (['/chat', {}, 'no X-User-Id'],
              ['/chat', { 'X-User-Id' => '' }, 'an empty X-User-Id'],
              ['/chat', { 'X-User-Id' => 'x' x 257 }, 'a 257-byte X-User-Id'],
              ['/chat', { 'X-User-Id' => "ann\xff" },
               'an X-User-Id that is not UTF-8'],
              ['/chat', { 'X-User-Id' => "\xc3" },
               'an X-User-Id ending inside a UTF-8 sequence'],
              ['/nouser', { 'X-User-Id' => 'u1' }, 'no collab_user'])
{
    my ($path, $h, $why) = @$case;
    my $key = 'dGhlIHNhbXBsZSBub25jZQ==';
    my $req = "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        . "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        . "Sec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n"
        . "Sec-WebSocket-Protocol: collab.v1\r\n"
        . join('', map { "$_: $h->{$_}\r\n" } sort keys %$h)
        . "Connection: close\r\n\r\n";
    my ($status) = $t->http_raw($req);
    is($status, 401, "upgrade with $why: 401");
}
is(rows('SELECT count(*) FROM users'), 0, 'no user row for a refused upgrade');


# --- create -----------------------------------------------------------------

my $ann = Collab::Chat->open($t, user => 'ann', name => 'Ann');
my $bob = Collab::Chat->open($t, user => 'bob', name => 'Bob');
my $cat = Collab::Chat->open($t, user => 'cat');

is_deeply($ann->req(op => 'ping', ref => 7), { op => 'pong', ref => 7 },
          'ping -> pong with the ref');
$ann->send({ op => 'ping' });
my $pong = $ann->take(sub { $_->{op} eq 'pong' });
ok($pong && exists $pong->{ref} && !defined $pong->{ref},
   'without a ref: "ref": null');

my $r = $ann->req(op => 'create', title => 'Général', isPublic => \1,
                  maxParticipants => 10);
is($r->{op}, 'created', 'create -> created') or diag(explain($r));
my $sess = $r->{session} // {};
my $slug = $sess->{id} // '';
like($slug, qr/^[A-Za-z0-9_-]{1,64}$/, 'the session id is a URL-safe slug');
is($sess->{title}, "G\x{e9}n\x{e9}ral", 'title');
is($sess->{type}, 'text', 'type defaults to text');
ok($sess->{isPublic}, 'isPublic');
is($sess->{maxParticipants}, 10, 'maxParticipants');
is($sess->{owner}, 'ann', 'owner is the external user id');
is($sess->{role}, 'owner', 'the creator is the owner');
is($sess->{lastSeq}, 0, 'lastSeq 0');
like($sess->{createdAt} // '', qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
     'createdAt is ISO 8601 UTC');
like($sess->{lastActivity} // '', qr/^\d{4}-\d\d-\d\dT/, 'lastActivity');

my ($sid, $db_title, $db_type, $db_pub, $db_max, $owner_ext) =
    $dbh->selectrow_array(
        'SELECT s.id, s.title, s.type, s.is_public, s.max_participants,
                u.external_id
         FROM chat_sessions s JOIN users u ON u.id = s.owner_id
         WHERE s.slug = ?', undef, $slug);
ok($sid, 'the session row exists');
is_deeply([$db_title, $db_type, $db_pub, $db_max, $owner_ext],
          ["G\x{e9}n\x{e9}ral", 'text', 1, 10, 'ann'], 'as created');
is_deeply($dbh->selectall_arrayref(
              'SELECT u.external_id, p.role FROM chat_participants p
               JOIN users u ON u.id = p.user_id WHERE p.session_id = ?',
              undef, $sid),
          [['ann', 'owner']], 'the owner is its one participant');
is(rows('SELECT display_name FROM users WHERE external_id = ?', 'ann'),
   'Ann', 'the user row carries collab_user_name');

$r = $bob->req(op => 'create', title => 'private one',
               type => 'text-to-image');
is($r->{op}, 'created', 'a second session');
my $priv = $r->{session}{id} // '';
is($r->{session}{type}, 'text-to-image', 'with its type');
ok(!$r->{session}{isPublic}, 'private by default');
is($r->{session}{maxParticipants}, undef, 'no participant limit by default');
isnt($priv, $slug, 'another slug');


# --- join, send, fan-out ----------------------------------------------------

$r = $ann->req(op => 'join', session => $slug);
is($r->{op}, 'joined', 'the owner joins');
is($r->{session}{id}, $slug, 'joined carries the session');
is($r->{lastSeq}, 0, 'lastSeq 0');
is_deeply($r->{messages}, [], 'no messages yet');
ok(!$r->{more}, 'more: false');

for my $c ($bob, $cat) {
    $r = $c->req(op => 'join', session => $slug);
    is($r->{op}, 'joined', $c->user . ' joins the public session');
    is($r->{session}{role}, 'member', 'as a member');
}
is(rows('SELECT count(*) FROM chat_participants WHERE session_id = ?', $sid),
   3, 'joining a public session makes a participant row');

my $N = 30;
for my $i (1 .. $N) {
    $ann->send({ op => 'send', session => $slug, body => "hello $i",
                 clientMsgId => "ann-$i", ref => "s$i" });
}

my (@acks, @own);
my $end = time + 20;
while ((@acks < $N || @own < $N) && time < $end) {
    my $m = $ann->take(sub { $_->{op} eq 'ack' || $_->{op} eq 'message'
                             || $_->{op} eq 'error' }, $end - time)
        or last;
    if ($m->{op} eq 'ack') {
        push @acks, $m;
    } elsif ($m->{op} eq 'message') {
        # the ack of a message comes before its event on the sender
        ok(0, "event $m->{seq} before its ack") if @acks < $m->{seq};
        push @own, $m;
    } else {
        push @acks, $m;
    }
}
is(scalar @acks, $N, "$N acks");
is_deeply([map { $_->{seq} } @acks], [1 .. $N], 'acks in order, seq 1..N');
is_deeply([map { $_->{ref} } @acks], [map { "s$_" } 1 .. $N],
          'each ack carries its ref');
is_deeply([map { $_->{clientMsgId} } @acks], [map { "ann-$_" } 1 .. $N],
          'and its clientMsgId');
ok(!(grep { $_->{duplicate} } @acks), 'no ack is a duplicate');
ok(!(grep { ($_->{session} // '') ne $slug } @acks), 'acks name the session');
like($acks[0]{createdAt} // '', qr/^\d{4}-\d\d-\d\dT.*Z$/, 'ack createdAt');
is_deeply([map { $_->{seq} } @own], [1 .. $N],
          "the sender's own connection gets the events too");

for my $c ($bob, $cat) {
    my @ev = $c->events($N, 20);
    is_deeply([map { $_->{seq} } @ev], [1 .. $N],
              $c->user . " receives $N events in seq order");
    is_deeply([map { $_->{body} } @ev], [map { "hello $_" } 1 .. $N],
              'with their bodies');
    is_deeply($ev[0], {
        op => 'message', session => $slug, seq => 1, user => 'ann',
        userName => 'Ann', kind => 'user', body => 'hello 1',
        clientMsgId => 'ann-1', createdAt => $acks[0]{createdAt},
    }, 'an event has every field') or diag(explain($ev[0]));
}

is_deeply($dbh->selectall_arrayref(
              'SELECT m.seq, m.body, m.client_msg_id, m.kind, u.external_id
               FROM chat_messages m JOIN users u ON u.id = m.user_id
               WHERE m.session_id = ? ORDER BY m.seq', undef, $sid),
          [map { [$_, "hello $_", "ann-$_", 'user', 'ann'] } 1 .. $N],
          'the table has the N messages, seq 1..N, as sent');
is(rows('SELECT last_seq FROM chat_sessions WHERE id = ?', $sid), $N,
   'chat_sessions.last_seq is N');

# a message from a user without a name has userName null
$r = $cat->req(op => 'send', session => $slug, body => 'meow',
               clientMsgId => 'c1');
is($r->{op}, 'ack', 'a member sends');
is($r->{seq}, $N + 1, 'the next seq');
my ($ev) = $bob->events(1);
is($ev->{user}, 'cat', 'the event names the sender');
ok(exists $ev->{userName} && !defined $ev->{userName},
   'userName null for a user without a name');
$ann->events(1);
$cat->events(1);
$N++;


# --- duplicates -------------------------------------------------------------

my $before = rows('SELECT count(*) FROM chat_messages');
$r = $ann->req(op => 'send', session => $slug, body => 'hello 5 again',
               clientMsgId => 'ann-5');
is($r->{op}, 'ack', 'a resent clientMsgId is acked');
is($r->{seq}, 5, 'with the original seq');
ok($r->{duplicate}, 'and duplicate: true');
is($r->{createdAt}, $acks[4]{createdAt}, 'and the original createdAt');
is(rows('SELECT count(*) FROM chat_messages'), $before, 'no row written');
is(rows('SELECT body FROM chat_messages WHERE session_id = ? AND seq = 5',
        $sid), 'hello 5', 'the stored body is the original');

# the same clientMsgId twice in one batch: one row, two acks
$ann->send({ op => 'send', session => $slug, body => 'twin',
             clientMsgId => 'twin', ref => 'tw1' });
$ann->send({ op => 'send', session => $slug, body => 'twin',
             clientMsgId => 'twin', ref => 'tw2' });
my $a1 = $ann->take(sub { ($_->{ref} // '') eq 'tw1' });
my $a2 = $ann->take(sub { ($_->{ref} // '') eq 'tw2' });
is($a1 && $a1->{op}, 'ack', 'first copy acked');
is($a2 && $a2->{op}, 'ack', 'second copy acked');
is($a1 && $a1->{seq}, $N + 1, 'the first is new');
is($a2 && $a2->{seq}, $N + 1, 'the second has the same seq');
ok($a1 && !$a1->{duplicate} && $a2->{duplicate},
   'only the second is a duplicate');
is(rows('SELECT count(*) FROM chat_messages WHERE client_msg_id = ?', 'twin'),
   1, 'one row');
$N++;

# the same clientMsgId from two connections of one user at once
my $ann2 = Collab::Chat->open($t, user => 'ann', name => 'Ann');
is($ann2->req(op => 'join', session => $slug)->{op}, 'joined',
   'a second tab of the same user joins');
for my $k (1 .. 10) {
    $ann->send({ op => 'send', session => $slug, body => "race $k",
                 clientMsgId => "race-$k", ref => "ra$k" });
    $ann2->send({ op => 'send', session => $slug, body => "race $k",
                  clientMsgId => "race-$k", ref => "rb$k" });
}
my (@race_a, @race_b);
for my $k (1 .. 10) {
    push @race_a, $ann->take(sub { ($_->{ref} // '') eq "ra$k" });
    push @race_b, $ann2->take(sub { ($_->{ref} // '') eq "rb$k" });
}
is(scalar(grep { $_ && $_->{op} eq 'ack' } @race_a, @race_b), 20,
   'both tabs get an ack for each of 10 racing copies');
is_deeply([map { $_ && $_->{seq} } @race_a], [map { $_ && $_->{seq} } @race_b],
          'each pair of acks has one seq');
is(scalar(grep { $race_a[$_] && $race_b[$_]
                 && !!$race_a[$_]{duplicate} != !!$race_b[$_]{duplicate} }
          0 .. 9), 10, 'exactly one of each pair is a duplicate');
is(rows(q{SELECT count(*) FROM chat_messages
          WHERE client_msg_id LIKE 'race-%'}), 10,
   'one row per racing clientMsgId');
$N += 10;

# bob's events: the twin once, each race once, no duplicates
my @ev = $bob->events(11, 15);
is_deeply([map { $_->{seq} } @ev], [$N - 10 .. $N],
          'others get one event per stored message, none for duplicates');
is(scalar($bob->drain_events(0.5)), 0, 'and nothing more');
@ev = $cat->events(11, 15);
is_deeply([map { $_->{seq} } @ev], [$N - 10 .. $N], 'so does cat');

# the same clientMsgId from another user is another message
$r = $bob->req(op => 'send', session => $slug, body => 'mine',
               clientMsgId => 'ann-1');
is($r->{op}, 'ack', "another user may reuse a clientMsgId");
ok(!$r->{duplicate}, 'it is not a duplicate');
is($r->{seq}, $N + 1, 'it gets the next seq');
$bob->events(1);
$N++;


# --- bodies are stored and returned byte for byte ---------------------------

my @bodies = (
    q{'); DROP TABLE chat_messages; --},
    q{Robert'); DELETE FROM users WHERE ('1'='1},
    q{$1 $2 ::text %s %n \\x00 \\\\},
    q{{"a",NULL,"b"}},
    q{{a,b}},
    q{NULL},
    q{"quoted" and \\backslashed\\ and ,commas,},
    "caf\x{e9} \x{65e5}\x{672c}\x{8a9e} \x{1F600} \x{202E}rtl",
    "line1\nline2\r\n\ttab",
    ' ',
    "\x{7f}\x{1}\x{1f}",
    'x' x 16384,
    ("\x{e9}" x 8192),
);
my @cmids = map { "b-$_-\"q\\,{}\x{e9}" } 0 .. $#bodies;

for my $i (0 .. $#bodies) {
    $r = $ann->req(op => 'send', session => $slug, body => $bodies[$i],
                   clientMsgId => $cmids[$i]);
    is($r->{op}, 'ack', "body $i is accepted") or diag(explain($r));
    is($r->{clientMsgId}, $cmids[$i], "the ack's clientMsgId is intact");
}
@ev = $cat->events(1 + scalar @bodies);
is($ev[0]{body}, 'mine', "cat got bob's message first");
shift @ev;
$bob->events(scalar @bodies);
is_deeply([map { $_->{body} } @ev], \@bodies, 'events carry the exact bodies');
is_deeply([map { $_->{clientMsgId} } @ev], \@cmids,
          'and the exact clientMsgIds');

my $stored = $dbh->selectall_arrayref(
    'SELECT body, client_msg_id FROM chat_messages
     WHERE session_id = ? AND seq > ? ORDER BY seq', undef, $sid, $N);
is_deeply([map { $_->[0] } @$stored], \@bodies,
          'the table holds the exact bodies');
is_deeply([map { $_->[1] } @$stored], \@cmids,
          'and the exact clientMsgIds');
is(rows('SELECT count(*) FROM users'), 3, 'the users table is intact');
$N += @bodies;

$r = $cat->req(op => 'history', session => $slug, before => $N + 1,
               limit => scalar @bodies);
is_deeply([map { $_->{body} } @{ $r->{messages} // [] }], \@bodies,
          'history returns the exact bodies');


# --- history ----------------------------------------------------------------

my $all = $dbh->selectall_arrayref(
    'SELECT seq, body FROM chat_messages WHERE session_id = ? ORDER BY seq',
    undef, $sid);
is(scalar @$all, $N, "$N messages in all");

$r = $bob->req(op => 'history', session => $slug, limit => 10);
is($r->{op}, 'history', 'history');
is($r->{session}, $slug, 'names the session');
is_deeply([map { $_->{seq} } @{ $r->{messages} }], [$N - 9 .. $N],
          'without before: the last 10, oldest first');
ok($r->{more}, 'more: true');

my @seen;
my $bef;
for (1 .. 100) {
    $r = $bob->req(op => 'history', session => $slug, limit => 7,
                   defined $bef ? (before => $bef) : ());
    last unless $r->{op} eq 'history';
    unshift @seen, @{ $r->{messages} };
    last unless $r->{more};
    $bef = $r->{messages}[0]{seq};
}
is_deeply([map { $_->{seq} } @seen], [1 .. $N],
          'paging back with before reaches seq 1, no gap, no repeat');
is_deeply([map { $_->{body} } @seen], [map { $_->[1] } @$all],
          'history bodies match the table');

$r = $bob->req(op => 'history', session => $slug);
is(scalar @{ $r->{messages} // [] }, 50, 'history limit defaults to 50');

$r = $bob->req(op => 'history', session => $slug, before => 1);
is_deeply($r->{messages}, [], 'nothing before seq 1');
ok(!$r->{more}, 'and no more');


# --- join without since: the last collab_join_history -----------------------

my $dan = Collab::Chat->open($t, user => 'dan', name => 'Dan');
$r = $dan->req(op => 'join', session => $slug);
is($r->{op}, 'joined', 'a late joiner');
is($r->{lastSeq}, $N, 'lastSeq is the newest seq');
is_deeply([map { $_->{seq} } @{ $r->{messages} }], [$N - 19 .. $N],
          'the last 20 messages (collab_join_history 20)');
ok($r->{more}, 'more: older messages exist');
is($r->{session}{lastSeq}, $N, 'the session object has lastSeq too');


# --- sessions ---------------------------------------------------------------

$r = $ann->req(op => 'create', title => 'third');
my $third = $r->{session}{id};
$dbh->do(q{UPDATE chat_sessions SET last_activity = now() - interval '1 hour'
           WHERE slug = ?}, undef, $slug);
$dbh->do(q{UPDATE chat_sessions SET last_activity = now() - interval '2 hour'
           WHERE slug = ?}, undef, $third);

$r = $ann->req(op => 'sessions');
is($r->{op}, 'sessions', 'sessions');
is_deeply([map { $_->{id} } @{ $r->{sessions} }], [$slug, $third],
          "the caller's sessions, most recent activity first");
is($r->{sessions}[0]{role}, 'owner', 'with the role');
is($r->{sessions}[0]{lastSeq}, $N, 'and lastSeq');

$r = $bob->req(op => 'sessions');
is_deeply([sort map { $_->{id} } @{ $r->{sessions} }], [sort $slug, $priv],
          "bob's: the one he joined and the one he owns");

# a send makes a session the most recent
is($ann->req(op => 'join', session => $third)->{op}, 'joined', 'join third');
is($ann->req(op => 'send', session => $third, body => 'bump',
             clientMsgId => 'bump')->{op}, 'ack', 'send into it');
$r = $ann->req(op => 'sessions');
is_deeply([map { $_->{id} } @{ $r->{sessions} }], [$third, $slug],
          'a send updates last_activity: it comes first now');
$r = $ann->req(op => 'sessions', limit => 1);
is(scalar @{ $r->{sessions} }, 1, 'limit');


# --- leave ------------------------------------------------------------------

$r = $cat->req(op => 'leave', session => $slug);
is_deeply([$r->{op}, $r->{session}], ['left', $slug], 'leave -> left');
$ann->req(op => 'send', session => $slug, body => 'after leave',
          clientMsgId => 'after-leave');
my ($bob_ev) = $bob->events(1);
is($bob_ev && $bob_ev->{body}, 'after leave', 'members still get events');
is(scalar($cat->drain_events(0.5)), 0, 'a connection that left gets none');
is(err_code($cat->req(op => 'send', session => $slug, body => 'x',
                      clientMsgId => 'x')),
   'ACCESS_DENIED', 'nor may it send');
is(err_code($cat->req(op => 'leave', session => $slug)), 'NOT_FOUND',
   'leaving again: NOT_FOUND');
is(rows(q{SELECT count(*) FROM chat_participants p JOIN users u
          ON u.id = p.user_id WHERE u.external_id = 'cat'}), 1,
   'leave keeps the participant row (membership is not the connection)');
is($cat->req(op => 'join', session => $slug)->{op}, 'joined',
   'and it can join again');

# the connection is still fine after all of this
is_deeply($ann->req(op => 'ping', ref => 'end'), { op => 'pong', ref => 'end' },
          'ping at the end');
for my $c ($ann, $ann2, $bob, $cat, $dan) {
    ok(!$c->{masked}, $c->user . ': no masked frame from the server');
    $c->close;
}

$dbh->disconnect;

done_testing();
