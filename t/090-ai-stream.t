#!/usr/bin/perl
#
# 090-ai-stream.t: the AI participant's streamed reply, shared live
# (issue 9).
#
# A mock OpenAI-compatible provider (t/lib/Collab/MockAI.pm) streams a
# canned reply slowly.  Two participants both receive every ai_delta (the
# same indices and texts, whose concatenation is the stored body) and the
# same final "message" event of kind "ai" with the next seq; history and
# the table hold exactly one ai message per reply; the provider got the
# key in Authorization and the session's history as roles, cut to
# collab_ai_context.  A second "@ai" while one runs is BUSY; ai_cancel
# mid-stream answers ai_cancelled and stores what arrived, marked
# cancelled; the worker keeps answering another connection's pings while
# a slow stream is in flight; the key is never in error.log nor in any
# frame a client receives.
#
# Why: this is the feature's contract (docs/PROTOCOL.md, "AI
# participant"); the database is the source of truth, so it is read with
# DBI rather than trusted from the replies.

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
use Collab::AITest;

my $t = Collab::Test->new;
$t->start_pg;
write_key($t);

my $mock = Collab::MockAI->start(dir => $t->dir);

$t->start_nginx(ai_conf($mock, timeout => '4s', port => ''));

my $dbh = $t->pg_dbh;

my $ann = Collab::Chat->open($t, user => 'ann', name => 'Ann',
                             raw_log => 1);
my $bob = Collab::Chat->open($t, user => 'bob', name => 'Bob',
                             raw_log => 1);
my $cat = Collab::Chat->open($t, user => 'cat', name => 'Cat',
                             raw_log => 1);

my $r = $ann->req(op => 'create', title => 'ai', isPublic => \1);
is($r->{op}, 'created', 'a session') or diag(explain($r));
my $slug = $r->{session}{id};
my $sid = $dbh->selectrow_array(
    'SELECT id FROM chat_sessions WHERE slug = ?', undef, $slug);

is($_->req(op => 'join', session => $slug)->{op}, 'joined',
   $_->user . ' joins') for $ann, $bob;

$r = $cat->req(op => 'create', title => 'elsewhere');
my $other = $r->{session}{id};
is($cat->req(op => 'join', session => $other)->{op}, 'joined',
   'cat is in another session');

sub ai_rows {
    return $dbh->selectall_arrayref(
        "SELECT seq, body, metadata::text, user_id, client_msg_id
         FROM chat_messages WHERE session_id = ? AND kind = 'ai'
         ORDER BY seq", undef, $sid);
}


# --- one reply, seen by both ------------------------------------------------

say_($ann, $slug, 'hello everyone');
say_($bob, $slug, 'hi Ann');
my $q1 = say_($ann, $slug, '@ai what is up?');
is($q1, 3, 'the question is seq 3');

my ($da, $fa) = ai_reply($ann, $q1);
my ($db, $fb) = ai_reply($bob, $q1);

my $want = Collab::MockAI::reply_text(10);

ok(@$da >= 2, 'ann got the reply in several ai_delta events ('
   . scalar(@$da) . ')');
is_deeply([map { $_->{index} } @$da], [0 .. $#$da],
          'indices 0, 1, 2 ... without gaps');
is_deeply([map { [$_->{index}, $_->{text}] } @$db],
          [map { [$_->{index}, $_->{text}] } @$da],
          'bob got the same deltas: same indices, same texts');
ok(!(grep { ($_->{session} // '') ne $slug } @$da, @$db),
   'every delta names the session');
ok(!(grep { !length $_->{text} } @$da), 'no delta is empty');
is(texts($da), $want, 'the deltas add up to the streamed text');

is($fa->{op}, 'message', 'then a message event') or diag(explain($fa));
is($fa->{kind}, 'ai', 'of kind ai');
is($fa->{seq}, 4, 'with the next seq');
ok(exists $fa->{user} && !defined $fa->{user}, 'user null');
is($fa->{userName}, 'AI', 'userName "AI"');
is($fa->{clientMsgId}, 'ai:3', 'clientMsgId "ai:<replyTo>"');
is($fa->{body}, texts($da), 'its body is the concatenation of the deltas');
is_deeply($fa->{metadata}, { replyTo => 3, model => 'mock/model-1' },
          'metadata: replyTo and model, nothing else')
    or diag(explain($fa->{metadata}));
my %fb = %$fb;
delete $fb{_raw};
is_deeply(\%fb, { %$fa }, 'bob got the same message event');

my $rows = ai_rows();
is(scalar @$rows, 1, 'one ai row in the table');
is($rows->[0][0], 4, 'at seq 4');
is($rows->[0][1], $want, 'with the whole text, byte for byte');
is_deeply(decode_json($rows->[0][2]),
          { replyTo => 3, model => 'mock/model-1' }, 'and its metadata');
is($dbh->selectrow_array('SELECT last_seq FROM chat_sessions WHERE id = ?',
                         undef, $sid), 4, 'last_seq 4');

$r = $bob->req(op => 'history', session => $slug);
is_deeply([map { [$_->{seq}, $_->{kind}] } @{ $r->{messages} // [] }],
          [[1, 'user'], [2, 'user'], [3, 'user'], [4, 'ai']],
          'history: the three messages and exactly one ai message');
is($r->{messages}[3]{body}, $want, 'history has the reply');

# what the provider got

my @req = $mock->requests;
is(scalar @req, 1, 'the provider got one request');
is($req[0]{method} . ' ' . $req[0]{path}, 'POST /v1/chat/completions',
   'POST <endpoint>/chat/completions');
is($req[0]{authorization}, "Bearer $KEY", 'with the key as a bearer token');
like($req[0]{content_type} // '', qr{^application/json}, 'JSON');
like($req[0]{accept} // '', qr{text/event-stream}, 'asking for SSE');
my $body = $req[0]{body};
is(ref $body, 'HASH', 'the body is JSON');
is($body->{model}, 'mock/model-1', 'model');
ok($body->{stream} && ref $body->{stream}, 'stream: true');
is($body->{max_tokens}, 300, 'max_tokens');
my @m = @{ $body->{messages} // [] };
is($m[0]{role}, 'system', 'a system prompt first');
is_deeply([@m[1 .. $#m]],
          [{ role => 'user', content => 'Ann: hello everyone' },
           { role => 'user', content => 'Bob: hi Ann' },
           { role => 'user', content => 'Ann: @ai what is up?' }],
          'then the history as roles, with names, the question last')
    or diag(explain(\@m));


# --- BUSY, a slow stream and the worker's latency, cancel ---------------------

my $q2 = say_($ann, $slug, '@ai [long] tell a long story');
my ($d2a, $f2a) = ([], undef);

my $first = $ann->take(sub { $_->{op} eq 'ai_delta'
                             && $_->{replyTo} == $q2 }, 10);
ok($first, 'the long reply starts streaming');
push @$d2a, $first if $first;

my $q3 = say_($bob, $slug, '@ai me too');
for my $c ($ann, $bob) {
    my $e = $c->take(sub { $_->{op} eq 'ai_error' }, 10) // {};
    is_deeply([@$e{qw(op session replyTo code)}],
              ['ai_error', $slug, $q3, 'BUSY'],
              $c->user . ': a second question meanwhile is BUSY');
    ok(length($e->{message} // ''), 'with a message');
}

# another connection of the same worker, in another session: its pings are
# answered promptly while the stream is in flight
my @rtt;
for (1 .. 20) {
    my $t0 = time;
    my $p = $cat->req(op => 'ping', -timeout => 5);
    push @rtt, time - $t0;
    ok(0, 'ping answered') unless $p->{op} eq 'pong';
}
@rtt = sort { $a <=> $b } @rtt;
my $p90 = $rtt[int(0.9 * @rtt) - 1];
ok($p90 < 0.3, sprintf('pings answered in %.1f ms (p90) during the stream',
                       $p90 * 1000))
    or diag(join ' ', map { sprintf '%.1f', $_ * 1000 } @rtt);
ok(!(grep { $_->{op} =~ /^ai_|^message$/ } $cat->pending),
   'the other session hears nothing of the reply');

# the stream is still running: the cancel finds it
$r = $ann->req(op => 'ai_cancel', session => $slug);
is_deeply([@$r{qw(op session)}], ['ai_cancelled', $slug],
          'ai_cancel mid-stream -> ai_cancelled') or diag(explain($r));

my ($rest, $f2) = ai_reply($ann, $q2);
push @$d2a, @$rest;
my ($d2b, $f2b) = ai_reply($bob, $q2);

is($f2->{op}, 'message', 'the cancelled reply is stored')
    or diag(explain($f2));
is($f2->{kind}, 'ai', 'as an ai message');
is($f2->{seq}, $q3 + 1, 'with the next seq');
my %meta = %{ $f2->{metadata} // {} };
$meta{cancelled} = $meta{cancelled} ? 'true' : 'false'
    if exists $meta{cancelled};
is_deeply(\%meta,
          { replyTo => $q2, model => 'mock/model-1', cancelled => 'true' },
          'metadata: replyTo, model, cancelled: true')
    or diag(explain($f2->{metadata}));
my $long = Collab::MockAI::reply_text(60);
ok(length $f2->{body} && length $f2->{body} < length $long
   && substr($long, 0, length $f2->{body}) eq $f2->{body},
   'its body is a non-empty beginning of the reply');
is($f2->{body}, texts($d2a), 'what the deltas had shown, no more, no less');
is_deeply([map { [$_->{index}, $_->{text}] } @$d2b],
          [map { [$_->{index}, $_->{text}] } @$d2a],
          'bob saw the same deltas');
is($f2b->{seq}, $f2->{seq}, 'and the same message');

$rows = ai_rows();
is(scalar @$rows, 2, 'two ai rows now: one per reply, none for BUSY');
is($rows->[1][1], $f2->{body}, 'the cancelled one as delivered');
is(decode_json($rows->[1][2])->{cancelled}, 1, 'marked cancelled');
is($dbh->selectrow_array(
       "SELECT count(*) FROM chat_messages WHERE session_id = ?
        AND kind = 'ai' AND (metadata->>'replyTo')::bigint = ?",
       undef, $sid, $q3), 0, 'nothing stored for the BUSY question');

$r = $ann->req(op => 'ai_cancel', session => $slug);
is($r->{op} . ':' . ($r->{code} // ''), 'error:NOT_FOUND',
   'ai_cancel with nothing running: NOT_FOUND');
$r = $cat->req(op => 'ai_cancel', session => $slug);
is($r->{op} . ':' . ($r->{code} // ''), 'error:ACCESS_DENIED',
   'ai_cancel in a session not joined: ACCESS_DENIED');


# --- the next reply: the history now has the assistant's turns ----------------

my $q4 = say_($ann, $slug, '@ai [fast] again');
my ($d4, $f4) = ai_reply($bob, $q4);
is($f4->{op}, 'message', 'a new question after a cancel is answered');
is($f4->{body}, $want, 'in full');
ai_reply($ann, $q4);

@req = $mock->requests;
is(scalar @req, 3, 'three requests in all (none for BUSY)');
@m = @{ $req[2]{body}{messages} // [] };
is_deeply([map { $_->{role} } @m],
          [qw(system assistant user user assistant user)],
          'collab_ai_context 5: the five newest messages, ai ones as '
          . 'assistant') or diag(explain(\@m));
is($m[1]{content}, $want, 'the first reply');
is($m[4]{content}, $f2->{body}, 'the cancelled reply as it was stored');
is($m[5]{content}, 'Ann: @ai [fast] again', 'the question last');

is(scalar @{ ai_rows() }, 3, 'three ai rows');


# --- the key ------------------------------------------------------------------

no_key_anywhere($t, $ann, $bob, $cat);

$mock->stop;

done_testing();
