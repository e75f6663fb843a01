#!/usr/bin/perl
#
# 092-ai-trigger.t: which messages call on the assistant, and how often
# (issue 9).
#
# collab_ai_trigger mention (the default): only a body starting with "@ai"
# followed by its end, a space, "," ":" or a newline, in any case;
# "@aiX", "hello @ai" or " @ai" do not.  always: every user message, but
# never the assistant's own.  off: none.  collab_rate_ai (in collab_zone)
# limits each user: beyond the burst the question is stored, and both
# participants get ai_error RATE_LIMITED; another user is not held back.
# collab_rate_ai_session: a third user of a session over its rate is
# refused too, and the same user elsewhere is answered.
#
# Why: a mention that misfires costs money at the provider; one that does
# not fire is a broken feature.  "Not triggered" is shown by order, not by
# waiting: the non-triggers are sent before a trigger, and the first ai
# event must belong to the trigger (a misfire would be answered first, or
# make the trigger BUSY).

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
use Collab::AITest qw(:DEFAULT open_session reply_to_of);

my $t = Collab::Test->new;
$t->start_pg;
write_key($t);

my $mock = Collab::MockAI->start(dir => $t->dir);

$t->start_nginx(ai_conf($mock, timeout => '5s', port => '', extra => <<'X'));
    collab_zone collab 1m;
    collab_rate_ai 1r/m burst=1;
X
$t->start_nginx(ai_conf($mock, timeout => '5s', port => '2',
                        extra => '    collab_ai_trigger always;'),
                name => 'always');
$t->start_nginx(ai_conf($mock, timeout => '5s', port => '3',
                        extra => '    collab_ai_trigger off;'),
                name => 'off');
$t->start_nginx(ai_conf($mock, timeout => '5s', port => '4',
                        extra => <<'X'), name => 'session-rate');
    collab_zone collab 1m;
    collab_rate_ai 100r/m burst=100;
    collab_rate_ai_session 1r/m burst=1;
X

my $dbh = $t->pg_dbh;

# a public session created by the first client and joined by all:
# ($slug, $sid)
sub session_for { open_session($dbh, 'trigger', @_) }

sub ai_replies {
    my ($sid) = @_;
    return $dbh->selectcol_arrayref(
        "SELECT (metadata->>'replyTo')::bigint FROM chat_messages
         WHERE session_id = ? AND kind = 'ai' ORDER BY seq", undef, $sid);
}

sub nreq { scalar(() = $mock->requests) }

# the first ai event the client gets (any replyTo)
sub first_ai { Collab::AITest::first_ai($_[0]) // { op => '(nothing)' } }


# --- mention ------------------------------------------------------------------

my $dan = Collab::Chat->open($t, user => 'dan', name => 'Dan',
                             raw_log => 1);
my $eve = Collab::Chat->open($t, user => 'eve', name => 'Eve',
                             raw_log => 1);
my ($slug, $sid) = session_for($dan, $eve);

my @not = ('@aiX what', 'hello @ai', ' @ai leading space', 'ai: hi',
           '@ai-bot hi', '@a', "\@\x{e4}i hi", '@@ai hi');
my @yes = ("\@AI, [fast] hi", '@ai', "\@ai:[fast]", "\@Ai\n[fast] line");

for my $i (0 .. $#yes) {
    my $n0 = nreq();
    my $c = $i % 2 ? $eve : $dan;
    # each user has 2 questions before the rate limit: two triggers each
    say_($c, $slug, $_) for @not;
    my $q = say_($c, $slug, $yes[$i]);
    my $e = first_ai($eve);
    (my $shown = $yes[$i]) =~ s/\n/\\n/g;
    is(reply_to_of($e), $q, "'$shown' triggers, and the "
       . scalar(@not) . ' non-mentions before it did not')
        or diag(explain($e));
    my ($d, $f) = ai_reply($eve, $q);
    $f = $e if $e->{op} eq 'message';
    is($f->{op} . ':' . ($f->{kind} // $f->{code} // ''), 'message:ai',
       '  and is answered') or diag(explain($f));
    is(nreq() - $n0, 1, '  one request to the provider');
    ai_reply($dan, $q);
}

is(scalar @{ ai_replies($sid) }, scalar @yes, 'one ai row per trigger');


# --- collab_rate_ai -----------------------------------------------------------

my $ann = Collab::Chat->open($t, user => 'ann', name => 'Ann',
                             raw_log => 1);
my $bob = Collab::Chat->open($t, user => 'bob', name => 'Bob',
                             raw_log => 1);
my ($slug2, $sid2) = session_for($ann, $bob);

my @q;
for my $n (1 .. 2) {
    my $q = say_($ann, $slug2, "\@ai [fast] question $n");
    push @q, $q;
    my ($d, $f) = ai_reply($bob, $q);
    is($f->{op} . ':' . ($f->{kind} // ''), 'message:ai',
       "1r/m burst=1: question $n is answered") or diag(explain($f));
    ai_reply($ann, $q);
}

my $n0 = nreq();
my $q3 = say_($ann, $slug2, '@ai [fast] question 3');
is($dbh->selectrow_array('SELECT body FROM chat_messages
                          WHERE session_id = ? AND seq = ?',
                         undef, $sid2, $q3),
   '@ai [fast] question 3', 'the third question is stored as a message');
for my $c ($ann, $bob) {
    my ($d, $e) = ai_reply($c, $q3);
    is_deeply([@$e{qw(op session replyTo code)}],
              ['ai_error', $slug2, $q3, 'RATE_LIMITED'],
              $c->user . ': but the assistant is RATE_LIMITED for ann')
        or diag(explain($e));
}
is(nreq(), $n0, 'no request to the provider');

my $qb = say_($bob, $slug2, '@ai [fast] my turn');
my ($db, $fb) = ai_reply($ann, $qb);
is($fb->{op} . ':' . ($fb->{kind} // ''), 'message:ai',
   'another user in the same session is answered') or diag(explain($fb));
ai_reply($bob, $qb);
is_deeply(ai_replies($sid2), [@q, $qb],
          'the rows: the two answers and bob\'s, none for question 3');


# --- always -------------------------------------------------------------------

my $port2 = $t->port(2);
my $fay = Collab::Chat->open($t, user => 'fay', name => 'Fay',
                             port => $port2, raw_log => 1);
my $gus = Collab::Chat->open($t, user => 'gus', name => 'Gus',
                             port => $port2, raw_log => 1);
my ($slug3, $sid3) = session_for($fay, $gus);

$n0 = nreq();
my @qs;
for my $body ('[fast] just chatting', 'hello @ai [fast]') {
    my $q = say_($fay, $slug3, $body);
    push @qs, $q;
    my ($d, $f) = ai_reply($gus, $q);
    is($f->{op} . ':' . ($f->{kind} // ''), 'message:ai',
       "always: '$body' is answered") or diag(explain($f));
    ai_reply($fay, $q);
}
is(nreq() - $n0, 2, 'two requests: the replies do not trigger replies');
is_deeply(ai_replies($sid3), \@qs, 'one ai row per message');

# the replies are stored: the next question comes after them, and the
# assistant answers none of its own messages (the next ai event is ours)
my $q = say_($gus, $slug3, '[fast] last one');
is(reply_to_of(first_ai($fay)), $q, 'the next ai event answers the user');


# --- off ----------------------------------------------------------------------

my $port3 = $t->port(3);
my $hal = Collab::Chat->open($t, user => 'hal', name => 'Hal',
                             port => $port3, raw_log => 1);
my $ivy = Collab::Chat->open($t, user => 'ivy', name => 'Ivy',
                             port => $port3, raw_log => 1);
my ($slug4, $sid4) = session_for($hal, $ivy);

$n0 = nreq();
say_($hal, $slug4, '@ai [fast] are you there?');
my $e = $ivy->take(sub { $_->{op} =~ /^ai_/
                         || $_->{op} eq 'message' && $_->{kind} eq 'ai' },
                   1.5);
ok(!$e, 'off: "@ai" is not answered') or diag(explain($e));
is(nreq(), $n0, '  no request to the provider');
is(scalar @{ ai_replies($sid4) }, 0, '  no ai row');
my $r = $hal->req(op => 'ai_cancel', session => $slug4);
is($r->{code}, 'NOT_FOUND', '  ai_cancel: NOT_FOUND');


# --- collab_rate_ai_session -------------------------------------------------

my $port4 = $t->port(4);
my @sr = map { Collab::Chat->open($t, user => "sr$_", name => "Sr$_",
                                  port => $port4, raw_log => 1) } 1 .. 3;
my ($slug5, $sid5) = session_for(@sr);

my @a5;
for my $i (0, 1) {
    my $q = say_($sr[$i], $slug5, "\@ai [fast] from sr" . ($i + 1));
    my ($d, $f) = ai_reply($sr[2], $q);
    is($f->{op} . ':' . ($f->{kind} // ''), 'message:ai',
       "1r/m burst=1 per session: question " . ($i + 1)
       . ' (another user each time) is answered') or diag(explain($f));
    ai_reply($_, $q) for @sr[0, 1];
    push @a5, $q;
}

$n0 = nreq();
my $q5 = say_($sr[2], $slug5, '@ai [fast] and me?');
for my $c (@sr) {
    my ($d, $e) = ai_reply($c, $q5);
    is_deeply([@$e{qw(op session replyTo code)}],
              ['ai_error', $slug5, $q5, 'RATE_LIMITED'],
              $c->user . ': a third user is RATE_LIMITED in this session')
        or diag(explain($e));
    like($e->{message} // '', qr/in this session/,
         '  the message names the session') if $c == $sr[0];
}
is(nreq(), $n0, '  no request to the provider');
is_deeply(ai_replies($sid5), \@a5, '  no ai row for it');

my ($slug6) = session_for($sr[2]);
my $q6 = say_($sr[2], $slug6, '@ai [fast] elsewhere');
my ($d6, $f6) = ai_reply($sr[2], $q6);
is($f6->{op} . ':' . ($f6->{kind} // ''), 'message:ai',
   'the same user in another session is answered') or diag(explain($f6));

no_key_anywhere($t, $dan, $eve, $ann, $bob, $fay, $gus, $hal, $ivy, @sr);

$mock->stop;

done_testing();
