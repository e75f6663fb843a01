#!/usr/bin/perl
#
# 091-ai-faults.t: what participants see when the AI provider fails
# (issue 9).
#
# The mock provider (t/lib/Collab/MockAI.pm) answers 401, 429, 500, 503,
# hangs (collab_ai_timeout 2s), streams garbage, ends its stream without
# [DONE], closes the connection mid-stream, says nothing, reports an
# error inside the stream after its 200 (an {"error": ...} event as
# OpenRouter sends, or finish_reason "error"), or stops at
# finish_reason "length"; a second nginx points collab_ai_endpoint at a
# closed port.  Each fault reaches both participants as one ai_error with
# its code (PROVIDER_REJECTED for 4xx, PROVIDER_FAILED for 5xx, TIMEOUT,
# MALFORMED, EMPTY, UNREACHABLE) and stores nothing; a reply cut by the
# token limit is stored once, marked truncated.  After all of them the
# worker still answers (no job leaked: collab_ai_concurrency is not used
# up), and the key is in no log line and no frame.
#
# Why: "nothing left half-stored" and "say which" are the feature's
# promises for faults; the table is read with DBI to check the first.

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
use Collab::AITest qw(:DEFAULT open_session);

my $t = Collab::Test->new;
$t->start_pg;
write_key($t);

my $mock = Collab::MockAI->start(dir => $t->dir);

# the provider's error bodies are logged at "error"; nothing is alerted
$t->start_nginx(ai_conf($mock, timeout => '2s', port => '',
                        extra => '    collab_ai_concurrency 2;'));

# a port nothing listens on: connections are refused
my $closed = Collab::Test::_free_port();
$t->start_nginx(ai_conf($mock, timeout => '2s', port => '2',
                        endpoint => "http://127.0.0.1:$closed/v1"),
                name => 'dead');

my $dbh = $t->pg_dbh;

# a public session created by the first client and joined by all:
# ($slug, $sid)
sub session_for { open_session($dbh, 'faults', @_) }

sub ai_count {
    my ($sid) = @_;
    return $dbh->selectrow_array(
        "SELECT count(*) FROM chat_messages
         WHERE session_id = ? AND kind = 'ai'", undef, $sid);
}

my $ann = Collab::Chat->open($t, user => 'ann', name => 'Ann',
                             raw_log => 1);
my $bob = Collab::Chat->open($t, user => 'bob', name => 'Bob',
                             raw_log => 1);
my ($slug, $sid) = session_for($ann, $bob);


# --- faults: one ai_error each, to both, nothing stored -----------------------

my @faults = (
    ['[401]',     'PROVIDER_REJECTED', qr/401/, 'the provider answers 401'],
    ['[429]',     'PROVIDER_REJECTED', qr/429/, 'the provider answers 429'],
    ['[500]',     'PROVIDER_FAILED',   qr/500/, 'the provider answers 500'],
    ['[503]',     'PROVIDER_FAILED',   qr/503/, 'the provider answers 503'],
    ['[hang]',    'TIMEOUT',           qr//,    'the provider never answers'],
    ['[garbage]', 'MALFORMED',         qr//,    'data lines are not JSON'],
    ['[nodone]',  'MALFORMED',         qr//,
     'the stream ends without [DONE]'],
    ['[cut]',     'MALFORMED',         qr//,
     'the connection is closed mid-stream'],
    ['[empty]',   'EMPTY',             qr//,    'the provider says nothing'],
    ['[miderror]', 'PROVIDER_FAILED',  qr/failed/,
     'an error event in the stream (OpenRouter, after the 200)'],
    ['[finerror]', 'PROVIDER_FAILED',  qr/failed/,
     'finish_reason "error" in the stream'],
);

for my $f (@faults) {
    my ($marker, $code, $msg_re, $why) = @$f;

    my $t0 = time;
    my $q = say_($ann, $slug, "\@ai $marker please");
    my ($da, $ea) = ai_reply($ann, $q, 10);
    my ($db, $eb) = ai_reply($bob, $q, 10);

    is_deeply([@$ea{qw(op session replyTo code)}],
              ['ai_error', $slug, $q, $code], "$why: ai_error $code")
        or diag(explain($ea));
    like($ea->{message} // '', $msg_re, '  with a message saying which')
        if length "$msg_re" > 7;
    ok(length($ea->{message} // ''), '  with a message');
    my %eb = %$eb;
    delete @eb{qw(_raw)};
    is_deeply(\%eb, { %$ea }, '  bob gets the same ai_error');
    is_deeply([map { $_->{text} } @$db], [map { $_->{text} } @$da],
              '  and the same deltas (if any came)');
    is(ai_count($sid), 0, '  nothing stored');
    ok(!(grep { $_->{op} eq 'message' && $_->{kind} ne 'user'
                || $_->{op} =~ /^ai_/ } $ann->pending, $bob->pending),
       '  and no other ai event') or diag(explain([$ann->pending]));
}

is($dbh->selectrow_array('SELECT last_seq FROM chat_sessions WHERE id = ?',
                         undef, $sid), scalar @faults,
   'last_seq counts only the questions');

like($t->error_log, qr/\[error\].*collab: ai: the provider answered 401/,
     'the provider\'s refusal is logged at error');
like($t->error_log,
     qr/\[error\].*the provider reported an error in the stream: mock: the/,
     'an error in the stream is logged with the provider\'s message');


# --- finish_reason "length": stored once, marked truncated --------------------

my $q = say_($ann, $slug, '@ai [length] a lot');
my ($dl, $fl) = ai_reply($ann, $q);
my ($dlb, $flb) = ai_reply($bob, $q);
is($fl->{op}, 'message', 'a reply cut at the token limit is stored')
    or diag(explain($fl));
is($fl->{body}, Collab::MockAI::reply_text(3), 'with what came');
is($fl->{body}, texts($dl), 'which the deltas showed');
ok($fl->{metadata}{truncated}, 'metadata.truncated');
ok(!exists $fl->{metadata}{cancelled}, 'not cancelled');
is($flb->{seq}, $fl->{seq}, 'bob gets it too');
is_deeply($dbh->selectall_arrayref(
              "SELECT seq, body, metadata->>'truncated' FROM chat_messages
               WHERE session_id = ? AND kind = 'ai'", undef, $sid),
          [[$fl->{seq}, $fl->{body}, 'true']], 'one row, marked truncated');


# --- the worker is still fine: no job left behind -----------------------------

for my $n (1 .. 3) {
    $q = say_($bob, $slug, "\@ai [fast] are you there $n");
    my ($d, $f) = ai_reply($ann, $q);
    is($f->{op} . ':' . ($f->{kind} // $f->{code} // ''), 'message:ai',
       "after the faults, question $n is answered "
       . '(collab_ai_concurrency 2 not used up by dead jobs)');
    ai_reply($bob, $q);
}
is(ai_count($sid), 4, 'four ai rows: the truncated one and three');


# --- connection refused -------------------------------------------------------

my $port2 = $t->port(2);
my $cy = Collab::Chat->open($t, user => 'cy', name => 'Cy',
                            port => $port2, raw_log => 1);
my $di = Collab::Chat->open($t, user => 'di', name => 'Di',
                            port => $port2, raw_log => 1);
my ($slug2, $sid2) = session_for($cy, $di);
my $nreq = () = $mock->requests;

$q = say_($cy, $slug2, '@ai anyone?');
for my $c ($cy, $di) {
    my ($d, $e) = ai_reply($c, $q, 10);
    is_deeply([@$e{qw(op session replyTo code)}],
              ['ai_error', $slug2, $q, 'UNREACHABLE'],
              $c->user . ': endpoint on a closed port: UNREACHABLE')
        or diag(explain($e));
    is(scalar @$d, 0, '  no delta before it');
}
is(ai_count($sid2), 0, '  nothing stored');
is(scalar(() = $mock->requests), $nreq, '  (the mock got nothing)');


# --- the key ------------------------------------------------------------------

no_key_anywhere($t, $ann, $bob, $cy, $di);
ok(index($t->error_log('dead'), $KEY) < 0,
   'nor in the second nginx\'s error.log');

$mock->stop;

done_testing();
