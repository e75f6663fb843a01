#!/usr/bin/perl
#
# 091-ai-faults.t: what participants see when the AI provider fails
# (issue 9).
#
# The mock provider (t/lib/Collab/MockAI.pm) answers 401, 429, 500, 503,
# hangs (collab_ai_timeout 2s), streams garbage, ends its stream without
# [DONE], closes the connection mid-stream, says nothing, or stops at
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

# --- shared by the t/09x-ai-*.t files ---------------------------------------

my $KEY = 'sk-mock-' . join('', map { sprintf '%02x', int rand 256 } 1 .. 16);

sub write_key {
    my ($t) = @_;
    open my $fh, '>', $t->dir . '/ai.key' or die $!;
    print $fh "$KEY\n";
    close $fh;
}

sub ai_conf {
    my ($mock, %o) = @_;
    my $extra = $o{extra} // '';
    my $endpoint = $o{endpoint} // $mock->endpoint;
    return <<"CONF";
    collab_postgres "%%PG_DSN%%" pool=2 timeout=10s;
    collab_batch_window 2ms;
    collab_ai_endpoint   $endpoint;
    collab_ai_key_file   %%TESTDIR%%/ai.key;
    collab_ai_model      mock/model-1;
    collab_ai_timeout    $o{timeout};
    collab_ai_max_tokens 300;
    collab_ai_context    5;
$extra
    server {
        listen 127.0.0.1:%%PORT$o{port}%%;

        location /chat {
            collab_websocket;
            collab_user \$http_x_user_id;
            collab_user_name \$http_x_user_name;
        }
    }
CONF
}

# the ai_delta events of the reply to $reply_to, in arrival order, and the
# event that ended it: the "message" of kind ai, or an ai_error
sub ai_reply {
    my ($c, $reply_to, $timeout) = @_;
    my (@d, $final);
    my $end = time + ($timeout // 15);
    while (time < $end) {
        my $e = $c->take(sub {
            my $r = $_->{op} eq 'message'
                ? ($_->{kind} // '') eq 'ai' && ref $_->{metadata} eq 'HASH'
                  ? $_->{metadata}{replyTo} : undef
                : $_->{op} =~ /^ai_(?:delta|error)$/ ? $_->{replyTo}
                : undef;
            defined $r && $r == $reply_to;
        }, $end - time) or last;
        if ($e->{op} eq 'ai_delta') {
            push @d, $e;
            next;
        }
        $final = $e;
        last;
    }
    return (\@d, $final // { op => '(nothing)' });
}

sub texts { join '', map { $_->{text} } @{ $_[0] } }

# the user's message; returns its seq (or dies: nothing else makes sense)
sub say_ {
    my ($c, $slug, $body) = @_;
    my $r = $c->req(op => 'send', session => $slug, body => $body,
                    clientMsgId => 'm' . int(rand 1e9));
    $r->{op} eq 'ack' or die "send '$body': " . explain($r);
    return $r->{seq};
}

sub no_key_anywhere {
    my ($t, @clients) = @_;
    my $log = $t->error_log;
    ok(index($log, $KEY) < 0, 'the key is not in error.log');
    my $frames = join '', map { $_->{raw_log} // '' } @clients;
    ok(length $frames, 'frames were received');
    ok(index($frames, $KEY) < 0, 'nor in any frame a client received');
    my $k = substr $KEY, 8, 12;
    ok(index($log, $k) < 0 && index($frames, $k) < 0,
       'not even a part of it');
}

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

sub session_for {
    my (@c) = @_;
    my $r = $c[0]->req(op => 'create', title => 'faults', isPublic => \1);
    my $slug = $r->{session}{id} // die explain($r);
    $_->req(op => 'join', session => $slug)->{op} eq 'joined'
        or die 'join' for @c;
    my $sid = $dbh->selectrow_array(
        'SELECT id FROM chat_sessions WHERE slug = ?', undef, $slug);
    return ($slug, $sid);
}

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
