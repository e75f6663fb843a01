#!/usr/bin/perl
#
# 096-ai-reload.t: a reply being streamed when nginx reloads is finished
# and stored, not dropped (DESIGN.md: nothing acknowledged is lost; a
# reload is routine for an operator).
#
# One worker.  Ann asks "@ai [long] ..." (the mock streams 60 chunks
# 100 ms apart); once the first ai_delta is in, nginx is reloaded.  The
# old worker closes Ann's connection (1012) at once but stays until the
# reply is finished and its message committed (a timer that is not
# cancelable holds a gracefully exiting worker while replies are made
# and while sends wait or are in PostgreSQL), then exits.  The database
# then holds exactly one ai message answering the question, the whole
# text, not cancelled; Ann, reconnected to the new worker, gets it in her
# join with since.  No duration is asserted: waits are generous
# deadlines.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;
use Collab::MockAI;
use Collab::AITest;

my $t = Collab::Test->new;
$t->start_pg;
write_key($t);

my $mock = Collab::MockAI->start(dir => $t->dir);

$t->start_nginx(ai_conf($mock, timeout => '20s'));

my $dbh = $t->pg_dbh;

my $ann = Collab::Chat->open($t, user => 'ann', name => 'Ann');
my $r = $ann->req(op => 'create', title => 'reload', isPublic => \1);
my $slug = $r->{session}{id} // die explain($r);
is($ann->req(op => 'join', session => $slug)->{op}, 'joined', 'Ann joins');

my $q = say_($ann, $slug, '@ai [long] tell a long story');
my $d = $ann->take(sub { $_->{op} eq 'ai_delta' && $_->{replyTo} == $q },
                   15);
ok($d, 'the reply is streaming');

my ($old) = $t->nginx_worker_pids;
$t->reload_nginx(wait => 0);

# the shutdown closes Ann's connection with 1012 at once
my $end = time + 15;
while (time < $end && !defined $ann->{close_code} && !$ann->{eof}) {
    $ann->take(sub { 0 }, 0.5);
}
is($ann->{close_code}, 1012,
   'the old worker closes the connection at once (1012)');

# ... and exits once the reply is stored
$end = time + 30;
sleep 0.1 while kill(0, $old) && time < $end;
ok(!kill(0, $old), 'the old worker exits once the reply is done');

my $rows = $dbh->selectall_arrayref(
    "SELECT m.seq, m.body, m.metadata->>'replyTo',
            m.metadata->>'cancelled'
       FROM chat_messages m JOIN chat_sessions s ON s.id = m.session_id
      WHERE s.slug = ? AND m.kind = 'ai'", undef, $slug);
is(scalar @$rows, 1, 'one ai message stored') or diag(explain($rows));
is($rows->[0][2], $q, 'answering the question');
is($rows->[0][1], Collab::MockAI::reply_text(60), 'the whole reply');
ok(!defined $rows->[0][3], 'not cancelled');

# Ann comes back (to the new worker) and resumes: the reply is there
$ann = Collab::Chat->open($t, user => 'ann', name => 'Ann');
$r = $ann->req(op => 'join', session => $slug, since => $q);
my @ai = grep { ($_->{kind} // '') eq 'ai' } @{ $r->{messages} // [] };
is(scalar @ai, 1, 'Ann resumes with since and gets the reply')
    or diag(explain($r));
$ann->close;

$mock->stop;

done_testing();
