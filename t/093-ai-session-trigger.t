#!/usr/bin/perl
#
# 093-ai-session-trigger.t: a session's own AI trigger (issue 9).
#
# The owner may set "aiTrigger" ("mention", "always", "off", or null for
# the server's collab_ai_trigger) at create and with update; every session
# snapshot carries it.  Two nginx instances ("hosts") a and b share
# PostgreSQL and Redis, both with the server's default (mention).  The
# owner is on a, a member on b joined before each change: the change must
# reach b's room through the relay, since b's worker is the one that stores
# the member's messages and decides whether they call on the assistant.
#
#   - create with aiTrigger "always": a plain message is answered;
#   - update to "off": "@ai" is answered neither on a nor on b;
#   - update to null: back to mention (a plain message before an "@ai" is
#     not answered, the "@ai" is);
#   - a member's update is ACCESS_DENIED and changes nothing; bad values
#     (wrong case, unknown, not a string) are BAD_REQUEST naming the
#     field and change nothing, not even the other fields of the request;
#     a create with one stores no session.
#
# Why: the override is a cost and privacy control for the owner ("off"
# must really be off, everywhere at once), and a stale room on another
# worker or host would ignore it.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Mojo::JSON qw(decode_json);
use Collab::Test;
use Collab::Chat;
use Collab::MockAI;
use Collab::AITest qw(write_key ai_reply say_ first_ai reply_to_of);


# --- the assistant's replies ------------------------------------------------

sub outcome {
    my ($f) = @_;
    return $f->{op} . ':' . ($f->{kind} // $f->{code} // '');
}


# --- two hosts with the server's default trigger (mention) ------------------

my $t = Collab::Test->new;
$t->start_pg;
$t->start_redis;
write_key($t, 'sk-mock-093');

my $mock = Collab::MockAI->start(dir => $t->dir);
my $endpoint = $mock->endpoint;

my $conf = <<"CONF";
    collab_postgres "%%PG_DSN%%" pool=2 timeout=10s;
    collab_redis 127.0.0.1:%%REDIS_PORT%%;
    collab_batch_window 2ms;
    collab_ai_endpoint   $endpoint;
    collab_ai_key_file   %%TESTDIR%%/ai.key;
    collab_ai_model      mock/model-1;
    collab_ai_timeout    5s;
    collab_ai_max_tokens 300;
    collab_ai_context    5;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user \$http_x_user_id;
            collab_user_name \$http_x_user_name;
        }
    }
CONF

(my $conf_b = $conf) =~ s/%%PORT%%/%%PORT2%%/;
$t->start_nginx($conf, name => 'a');
$t->start_nginx($conf_b, name => 'b');

my $dbh = $t->pg_dbh;

sub nreq { scalar(() = $mock->requests) }

sub stored {
    my ($slug, $col) = @_;
    return $dbh->selectrow_array(
        "SELECT $col FROM chat_sessions WHERE slug = ?", undef, $slug);
}

sub ai_rows {
    my ($slug) = @_;
    return $dbh->selectrow_array(
        "SELECT count(*) FROM chat_messages m
         JOIN chat_sessions s ON s.id = m.session_id
         WHERE s.slug = ? AND m.kind = 'ai'", undef, $slug);
}

# the member's "session" event after an update (b learns it through Redis)
sub session_event {
    my ($c, $slug) = @_;
    return $c->take(sub { $_->{op} eq 'session' && $_->{session} eq $slug },
                    10) // { op => '(no session event)' };
}

# nothing of the assistant on either connection for a while, and no
# request to the provider
sub not_answered {
    my ($what, $n0, @c) = @_;
    my $e = first_ai($c[0], 1.5);
    ok(!$e, "$what: not answered") or diag(explain($e));
    for my $c (@c[1 .. $#c]) {
        my $e2 = first_ai($c, 0.2);
        ok(!$e2, '  nor seen by ' . $c->user) or diag(explain($e2));
    }
    is(nreq(), $n0, '  no request to the provider');
}

my $own = Collab::Chat->open($t, user => 'own', name => 'Owen',
                            port => $t->port(1));
my $mem = Collab::Chat->open($t, user => 'mem', name => 'Mia',
                            port => $t->port(2));


# --- create with aiTrigger ---------------------------------------------------

my $nsessions = $dbh->selectrow_array('SELECT count(*) FROM chat_sessions');
for my $bad ('sometimes', 'ALWAYS', 'Off', '', 1, \1, [], {}) {
    my $r = $own->req(op => 'create', title => 'bad', aiTrigger => $bad);
    my $shown = ref $bad ? ref($bad) : "'$bad'";
    is_deeply([$r->{op}, $r->{code}], ['error', 'BAD_REQUEST'],
              "create with aiTrigger $shown: BAD_REQUEST")
        or diag(explain($r));
    like($r->{message} // '', qr/"aiTrigger"/, '  the message names it');
}
is($dbh->selectrow_array('SELECT count(*) FROM chat_sessions'), $nsessions,
   '  and no session was stored');

my $r = $own->req(op => 'create', title => 'plain');
ok(exists $r->{session}{aiTrigger} && !defined $r->{session}{aiTrigger},
   'a session without one: aiTrigger null') or diag(explain($r));
$r = $own->req(op => 'create', title => 'null', aiTrigger => undef);
ok(exists $r->{session}{aiTrigger} && !defined $r->{session}{aiTrigger},
   'aiTrigger null at create: null') or diag(explain($r));

$r = $own->req(op => 'create', title => 'ai always', isPublic => \1,
               aiTrigger => 'always');
is($r->{session}{aiTrigger}, 'always', 'create with "always": in created')
    or diag(explain($r));
my $slug = $r->{session}{id};
is(stored($slug, 'ai_trigger'), 'always', '  and stored');

for my $c ($own, $mem) {
    $r = $c->req(op => 'join', session => $slug);
    is($r->{session}{aiTrigger}, 'always',
       $c->user . ': in the joined snapshot') or diag(explain($r));
}

$r = $mem->req(op => 'sessions');
my ($listed) = grep { $_->{id} eq $slug } @{ $r->{sessions} // [] };
is($listed->{aiTrigger}, 'always', 'and in the sessions list');

# always on a mention server: a plain message from the member (stored on
# b) and one from the owner (stored on a) are answered
for my $c ($mem, $own) {
    my $n0 = nreq();
    my $q = say_($c, $slug, '[fast] no mention here');
    my ($d, $f) = ai_reply($own, $q);
    is(outcome($f), 'message:ai',
       'always: ' . $c->user . "'s plain message is answered")
        or diag(explain($f));
    ai_reply($mem, $q);
    is(nreq() - $n0, 1, '  one request to the provider');
}


# --- update to off -----------------------------------------------------------

$r = $own->req(op => 'update', session => $slug, aiTrigger => 'off');
is_deeply([$r->{op}, $r->{session}{aiTrigger}], ['updated', 'off'],
          'update aiTrigger "off": updated') or diag(explain($r));
is(stored($slug, 'ai_trigger'), 'off', '  stored');
my $e = session_event($mem, $slug);
is($e->{changes}{aiTrigger}, 'off', '  the member on b gets the session event')
    or diag(explain($e));
session_event($own, $slug);

my $n0 = nreq();
say_($mem, $slug, '@ai [fast] anyone there? (from b)');
say_($own, $slug, '@ai [fast] anyone there? (from a)');
not_answered('off: "@ai" on a and on b', $n0, $own, $mem);


# --- only the owner, only good values ---------------------------------------

$r = $mem->req(op => 'update', session => $slug, aiTrigger => 'always');
is_deeply([$r->{op}, $r->{code}], ['error', 'ACCESS_DENIED'],
          "a member's update: ACCESS_DENIED") or diag(explain($r));
is(stored($slug, 'ai_trigger'), 'off', '  nothing changed');

my $title = stored($slug, 'title');
for my $bad ('sometimes', 'ALWAYS', ' off', 0, \0, ['off'], { v => 'off' }) {
    $r = $own->req(op => 'update', session => $slug, title => 'renamed',
                   aiTrigger => $bad);
    my $shown = ref $bad ? ref($bad) : "'$bad'";
    is_deeply([$r->{op}, $r->{code}], ['error', 'BAD_REQUEST'],
              "update with aiTrigger $shown: BAD_REQUEST")
        or diag(explain($r));
    like($r->{message} // '', qr/"aiTrigger"/, '  the message names it');
}
is_deeply([stored($slug, 'ai_trigger'), stored($slug, 'title')],
          ['off', $title], '  nothing changed, not even the title');
ok(!$mem->take(sub { $_->{op} eq 'session' }, 0.5),
   '  and no session event went out');

$n0 = nreq();
say_($mem, $slug, '[fast] still off?');
not_answered('after the refused updates: still off', $n0, $own, $mem);


# --- update to always, then back to the server's -----------------------------

$r = $own->req(op => 'update', session => $slug, aiTrigger => 'always');
is($r->{session}{aiTrigger}, 'always', 'update to "always"')
    or diag(explain($r));
session_event($mem, $slug);
session_event($own, $slug);

$n0 = nreq();
my $q = say_($mem, $slug, '[fast] plain again, from b');
my ($d, $f) = ai_reply($mem, $q);
is(outcome($f), 'message:ai', '  a plain message on b is answered')
    or diag(explain($f));
ai_reply($own, $q);
is(nreq() - $n0, 1, '  one request');

$r = $own->req(op => 'update', session => $slug, aiTrigger => undef);
ok($r->{op} eq 'updated' && exists $r->{session}{aiTrigger}
   && !defined $r->{session}{aiTrigger}, 'update aiTrigger null: null')
    or diag(explain($r));
ok(!defined stored($slug, 'ai_trigger'), '  stored as NULL');
$e = session_event($mem, $slug);
ok(exists $e->{changes}{aiTrigger} && !defined $e->{changes}{aiTrigger},
   '  the member sees null') or diag(explain($e));
session_event($own, $slug);

# the server's mention again: the plain message goes first, so the first
# ai event must answer the mention
$n0 = nreq();
say_($mem, $slug, '[fast] plain, not a question');
$q = say_($mem, $slug, '@ai [fast] a question');
$e = first_ai($own);
is(reply_to_of($e), $q,
   'null: the server\'s mention again (plain not answered, @ai is)')
    or diag(explain($e));
ai_reply($own, $q);
ai_reply($mem, $q);
is(nreq() - $n0, 1, '  one request');

# an update that does not mention aiTrigger keeps it
$r = $own->req(op => 'update', session => $slug, aiTrigger => 'off');
session_event($mem, $slug);
session_event($own, $slug);
$r = $own->req(op => 'update', session => $slug, title => 'renamed');
is_deeply([$r->{session}{title}, $r->{session}{aiTrigger}],
          ['renamed', 'off'], 'an update of the title keeps aiTrigger');
session_event($mem, $slug);
session_event($own, $slug);

# a connection that joins later (a fresh room on b) reads it at its join
$mem->close;
my $mem2 = Collab::Chat->open($t, user => 'mem', name => 'Mia',
                             port => $t->port(2));
sleep 0.3;
$r = $mem2->req(op => 'join', session => $slug);
is($r->{session}{aiTrigger}, 'off', 'a later join on b: off in its snapshot')
    or diag(explain($r));
$n0 = nreq();
say_($mem2, $slug, '@ai [fast] now?');
not_answered('  and its "@ai" is not answered', $n0, $mem2, $own);

is(ai_rows($slug), 4, 'the ai rows: the four answers, nothing else');

$mock->stop;


done_testing();
