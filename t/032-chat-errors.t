#!/usr/bin/perl
#
# 032-chat-errors.t: every bad request gets its error code and writes
# nothing (issue 3, invariant 5 of DESIGN.md).
#
# Each case sends one request and compares the reply's op, code and ref;
# the row counts of users, chat_sessions, chat_participants and
# chat_messages (and chat_sessions.last_seq) must be the same before and
# after.  Also: a private session refuses a non-participant
# (ACCESS_DENIED), a full public session refuses one more (CONFLICT),
# 256 unacknowledged sends are the most a connection may have
# (RATE_LIMITED, made deterministic by holding the session row locked),
# a binary frame closes with 1003, and the connection stays usable after
# every op-level error.

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
    collab_postgres "%%PG_DSN%%" pool=2 timeout=20s;
    collab_batch_window 2ms;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
            collab_user_name $http_x_user_name;
            collab_max_body_size 16k;
        }

        location /small {
            collab_websocket;
            collab_user $http_x_user_id;
            collab_max_body_size 10;
        }
    }
CONF

my $dbh = $t->pg_dbh;

sub rows { $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]) }

sub counts {
    return join ' ', (map { rows("SELECT count(*) FROM $_") }
                      qw(users chat_sessions chat_participants chat_messages)),
        rows('SELECT coalesce(sum(last_seq), 0) FROM chat_sessions');
}

my $ann = Collab::Chat->open($t, user => 'ann', name => 'Ann');
my $bob = Collab::Chat->open($t, user => 'bob', name => 'Bob');

my $pub = $ann->req(op => 'create', title => 'public', isPublic => \1)
    ->{session}{id};
my $priv = $ann->req(op => 'create', title => 'private')->{session}{id};
ok($pub && $priv, 'two sessions');
is($ann->req(op => 'join', session => $pub)->{op}, 'joined', 'ann joins');
is($ann->req(op => 'send', session => $pub, body => 'first',
             clientMsgId => 'first')->{op}, 'ack', 'one message');
is($bob->req(op => 'sessions')->{op}, 'sessions',
   'bob is connected and known');

my $unknown = 'NoSuchSession0000000000';
my $big = 'x' x 16385;
my $big_utf8 = "\x{e9}" x 8193;         # 16386 bytes, 8193 characters

# [request (hash or raw text), code, description]
my @cases = (
    # not a request
    ['not json', 'BAD_REQUEST', 'not JSON'],
    ['[]', 'BAD_REQUEST', 'an array'],
    ['{"op":"send"', 'BAD_REQUEST', 'truncated JSON'],
    [{ ref => 1 }, 'BAD_REQUEST', 'no op'],
    [{ op => 'nope' }, 'BAD_REQUEST', 'unknown op'],
    [{ op => 'create', ref => [1] }, 'BAD_REQUEST', 'ref not a scalar'],
    ['{"op":"send","op":"send"}', 'BAD_REQUEST', 'duplicate keys'],

    # create
    [{ op => 'create' }, 'BAD_REQUEST', 'create without title'],
    [{ op => 'create', title => 5 }, 'BAD_REQUEST', 'title a number'],
    [{ op => 'create', title => '' }, 'BAD_REQUEST', 'empty title'],
    [{ op => 'create', title => " \t\n" }, 'BAD_REQUEST', 'blank title'],
    [{ op => 'create', title => 'é' x 201 }, 'BAD_REQUEST',
     'title of 201 characters'],
    [{ op => 'create', title => 't', type => 'video' }, 'BAD_REQUEST',
     'unknown type'],
    [{ op => 'create', title => 't', type => 1 }, 'BAD_REQUEST',
     'type a number'],
    [{ op => 'create', title => 't', isPublic => 'yes' }, 'BAD_REQUEST',
     'isPublic a string'],
    [{ op => 'create', title => 't', maxParticipants => 0 }, 'BAD_REQUEST',
     'maxParticipants 0'],
    [{ op => 'create', title => 't', maxParticipants => '3' },
     'BAD_REQUEST', 'maxParticipants a string'],
    [{ op => 'create', title => 't', maxParticipants => 1.5 },
     'BAD_REQUEST', 'maxParticipants 1.5'],
    [{ op => 'create', title => 't', maxParticipants => 100001 },
     'BAD_REQUEST', 'maxParticipants 100001'],

    # sessions
    [{ op => 'sessions', limit => 0 }, 'BAD_REQUEST', 'sessions limit 0'],
    [{ op => 'sessions', limit => 201 }, 'BAD_REQUEST', 'sessions limit 201'],

    # join
    [{ op => 'join' }, 'BAD_REQUEST', 'join without session'],
    [{ op => 'join', session => '' }, 'BAD_REQUEST', 'empty session'],
    [{ op => 'join', session => 'a b' }, 'BAD_REQUEST', 'session with space'],
    [{ op => 'join', session => "x'; --" }, 'BAD_REQUEST',
     'session with quote'],
    [{ op => 'join', session => 'a' x 65 }, 'BAD_REQUEST',
     'session of 65 characters'],
    [{ op => 'join', session => 7 }, 'BAD_REQUEST', 'session a number'],
    [{ op => 'join', session => $pub, since => -1 }, 'BAD_REQUEST',
     'since -1'],
    [{ op => 'join', session => $pub, since => '3' }, 'BAD_REQUEST',
     'since a string'],
    [{ op => 'join', session => $pub, since => 1.5 }, 'BAD_REQUEST',
     'since 1.5'],
    [{ op => 'join', session => $unknown }, 'NOT_FOUND', 'unknown session'],
    [{ op => 'join', session => $priv }, 'ACCESS_DENIED',
     'private session, not a participant'],

    # leave
    [{ op => 'leave' }, 'BAD_REQUEST', 'leave without session'],
    [{ op => 'leave', session => $pub }, 'NOT_FOUND', 'leave, not joined'],

    # send
    [{ op => 'send', session => $pub, body => 'x', clientMsgId => 'n1' },
     'ACCESS_DENIED', 'send without joining'],
    [{ op => 'send', session => $unknown, body => 'x', clientMsgId => 'n1' },
     'ACCESS_DENIED', 'send to an unknown session'],
    [{ op => 'send', body => 'x', clientMsgId => 'n1' }, 'BAD_REQUEST',
     'send without session'],
    [{ op => 'history', session => $pub }, 'ACCESS_DENIED',
     'history without joining'],
);

# the cases that need bob to be joined to $pub
my @joined_cases = (
    [{ op => 'send', session => $pub, clientMsgId => 'n1' }, 'BAD_REQUEST',
     'no body'],
    [{ op => 'send', session => $pub, body => '', clientMsgId => 'n1' },
     'BAD_REQUEST', 'empty body'],
    [{ op => 'send', session => $pub, body => 5, clientMsgId => 'n1' },
     'BAD_REQUEST', 'body a number'],
    [{ op => 'send', session => $pub, body => ['x'], clientMsgId => 'n1' },
     'BAD_REQUEST', 'body an array'],
    [{ op => 'send', session => $pub, body => undef, clientMsgId => 'n1' },
     'BAD_REQUEST', 'body null'],
    ['{"op":"send","session":"' . $pub . '","body":"a\u0000b",'
     . '"clientMsgId":"n1"}', 'BAD_REQUEST', 'body with a NUL'],
    [{ op => 'send', session => $pub, body => 'x' }, 'BAD_REQUEST',
     'no clientMsgId'],
    [{ op => 'send', session => $pub, body => 'x', clientMsgId => '' },
     'BAD_REQUEST', 'empty clientMsgId'],
    [{ op => 'send', session => $pub, body => 'x', clientMsgId => 12 },
     'BAD_REQUEST', 'clientMsgId a number'],
    [{ op => 'send', session => $pub, body => 'x',
       clientMsgId => 'c' x 129 }, 'BAD_REQUEST', 'clientMsgId of 129'],
    [{ op => 'send', session => $pub, body => $big, clientMsgId => 'n1' },
     'TOO_LARGE', 'body of 16k + 1 bytes'],
    [{ op => 'send', session => $pub, body => $big_utf8,
       clientMsgId => 'n1' }, 'TOO_LARGE', 'body of 16386 UTF-8 bytes'],
    [{ op => 'history', session => $pub, limit => 0 }, 'BAD_REQUEST',
     'history limit 0'],
    [{ op => 'history', session => $pub, limit => 201 }, 'BAD_REQUEST',
     'history limit 201'],
    [{ op => 'history', session => $pub, limit => 'x' }, 'BAD_REQUEST',
     'history limit a string'],
    [{ op => 'history', session => $pub, before => 0 }, 'BAD_REQUEST',
     'history before 0'],
    [{ op => 'history', session => $pub, before => -5 }, 'BAD_REQUEST',
     'history before -5'],
    [{ op => 'history', session => $priv }, 'ACCESS_DENIED',
     'history of a session not joined'],
    [{ op => 'send', session => $priv, body => 'x', clientMsgId => 'n1' },
     'ACCESS_DENIED', 'send to a private session not joined'],
);

my $n = 0;

sub run_cases {
    my ($c, @list) = @_;
    for my $case (@list) {
        my ($req, $code, $what) = @$case;
        my $ref = 'e' . ++$n;
        my $before = counts();
        if (ref $req) {
            $c->send({ %$req, exists $req->{ref} ? () : (ref => $ref) });
        } else {
            $c->send_text($req);
        }
        my $want_ref = ref $req ? (exists $req->{ref}
                                   ? (ref $req->{ref} ? undef : $req->{ref})
                                   : $ref)
                                : undef;
        my $r = $c->take(sub { $_->{op} ne 'message' }, 15)
            // { op => '(no reply)' };
        is_deeply([$r->{op}, $r->{code}, $r->{ref}],
                  ['error', $code, $want_ref], "$what: $code")
            or diag(explain($r));
        ok(defined $r->{message} && length $r->{message}, '  with a message');
        is(counts(), $before, '  nothing written');
    }
}

run_cases($bob, @cases);
is($bob->req(op => 'join', session => $pub)->{op}, 'joined', 'bob joins');
run_cases($bob, @joined_cases);

is_deeply($bob->req(op => 'ping', ref => 'alive'), { op => 'pong',
          ref => 'alive' }, 'the connection is open after every error');

# the limits themselves are fine
my $r = $bob->req(op => 'send', session => $pub, body => 'x' x 16384,
                  clientMsgId => 'c' x 128);
is($r->{op}, 'ack', 'a body of exactly 16k and a clientMsgId of 128 pass');
$r = $bob->req(op => 'create', title => 'é' x 200);
is($r->{op}, 'created', 'a title of 200 characters passes');

# a smaller collab_max_body_size
my $small = Collab::Chat->open($t, user => 'bob', path => '/small');
is($small->req(op => 'join', session => $pub)->{op}, 'joined',
   'join on a location with collab_max_body_size 10');
my $before = counts();
is($small->req(op => 'send', session => $pub, body => 'x' x 11,
               clientMsgId => 's1')->{code}, 'TOO_LARGE',
   '11 bytes: TOO_LARGE');
is(counts(), $before, 'nothing written');
is($small->req(op => 'send', session => $pub, body => 'x' x 10,
               clientMsgId => 's2')->{op}, 'ack', '10 bytes: stored');
$small->close;


# --- private session: participants only -------------------------------------

my $priv_id = rows('SELECT id FROM chat_sessions WHERE slug = ?', $priv);
is(rows('SELECT count(*) FROM chat_participants WHERE session_id = ?',
        $priv_id), 1, 'the private session still has only its owner');
is($ann->req(op => 'join', session => $priv)->{op}, 'joined',
   'the owner joins her private session');
is($ann->req(op => 'send', session => $priv, body => 'secret',
             clientMsgId => 'p1')->{op}, 'ack', 'and sends');
$r = $bob->req(op => 'join', session => $priv, since => 0);
is($r->{code}, 'ACCESS_DENIED', 'a non-participant cannot resume into it');
ok(!exists $r->{messages}, 'and gets no messages');
is(scalar(grep { ($_->{session} // '') eq $priv } $bob->pending), 0,
   'nor events of it');


# --- public session full ----------------------------------------------------

$r = $ann->req(op => 'create', title => 'small room', isPublic => \1,
               maxParticipants => 2);
my $room = $r->{session}{id};
my $room_id = rows('SELECT id FROM chat_sessions WHERE slug = ?', $room);
is($bob->req(op => 'join', session => $room)->{op}, 'joined',
   'bob takes the second place');
my $cat = Collab::Chat->open($t, user => 'cat');
# its user row is written when it connects: wait for that first
is($cat->req(op => 'sessions')->{op}, 'sessions', 'cat is known');
$before = counts();
$r = $cat->req(op => 'join', session => $room);
is_deeply([$r->{op}, $r->{code}], ['error', 'CONFLICT'],
          'a third user: CONFLICT');
is(counts(), $before, 'no participant row for the refused one');
is($bob->req(op => 'join', session => $room)->{op}, 'joined',
   'a participant may join again when it is full');
my $bob2 = Collab::Chat->open($t, user => 'bob');
is($bob2->req(op => 'join', session => $room)->{op}, 'joined',
   "and from another tab");
is(rows('SELECT count(*) FROM chat_participants WHERE session_id = ?',
        $room_id), 2, 'still two participants');
$bob2->close;


# --- RATE_LIMITED: at most 256 sends waiting for their ack ------------------
#
# A transaction holds the session row locked, so the batch that wants to
# bump last_seq waits: the first 256 sends stay unacknowledged, the 257th
# is refused.  Then the lock goes and the 256 are stored.

my $lock = $t->pg_dbh(AutoCommit => 0);
$lock->do('SELECT 1 FROM chat_sessions WHERE slug = ? FOR UPDATE', undef,
          $pub);

my $before_msgs = rows('SELECT count(*) FROM chat_messages');
for my $i (1 .. 257) {
    $bob->send({ op => 'send', session => $pub, body => "rl $i",
                 clientMsgId => "rl-$i", ref => "rl$i" });
}
$r = $bob->take(sub { $_->{op} eq 'error' || $_->{op} eq 'ack' }, 10);
is_deeply([$r && $r->{op}, $r && $r->{code}, $r && $r->{ref}],
          ['error', 'RATE_LIMITED', 'rl257'],
          'the 257th unacknowledged send: RATE_LIMITED');
is(rows('SELECT count(*) FROM chat_messages'), $before_msgs,
   'nothing committed while the row is locked');
$lock->rollback;
$lock->disconnect;

my @acks;
while (my $a = $bob->take(sub { $_->{op} eq 'ack' || $_->{op} eq 'error' },
                          20))
{
    push @acks, $a;
    last if @acks == 256;
}
is(scalar(grep { $_->{op} eq 'ack' } @acks), 256,
   'the 256 waiting sends are acked once the lock is gone');
is_deeply([map { $_->{ref} } @acks], [map { "rl$_" } 1 .. 256], 'in order');
is(rows(q{SELECT count(*) FROM chat_messages WHERE client_msg_id LIKE 'rl-%'}),
   256, '256 rows, none for the refused send');
is(rows(q{SELECT count(*) FROM chat_messages WHERE client_msg_id = 'rl-257'}),
   0, 'the refused one is not stored');
is($bob->req(op => 'send', session => $pub, body => 'after',
             clientMsgId => 'rl-257')->{op}, 'ack',
   'and may be sent again now');


# --- a binary frame closes with 1003 ----------------------------------------

$before = counts();
$bob->{t}->ws_send($bob->{s}, opcode => 2, payload => '{"op":"ping"}');
$bob->take(sub { 0 }, 3);               # read until the close
is($bob->{close_code}, 1003, 'a binary frame: close 1003');
is(counts(), $before, 'nothing written');

for my $c ($ann, $bob, $cat) {
    ok(!$c->{masked}, $c->user . ': no masked frame from the server');
    $c->close;
}
$dbh->disconnect;

done_testing();
