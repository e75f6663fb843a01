#!/usr/bin/perl
#
# 094-ai-image.t: the assistant in a text-to-image session (issue 9).
#
# In a session of type "text-to-image" a message that calls on the
# assistant (the same collab_ai_trigger rules) POSTs {model, prompt, n: 1,
# response_format: "b64_json"} to <endpoint>/images/generations with
# collab_ai_image_model, the prompt being the message without its "@ai".
# Every participant gets ai_progress {stage: "generating"} when the
# request is out, then one stored message of kind "ai" whose metadata
# holds {image, replyTo, model}: a data:image/png;base64 URL, or the
# provider's URL when it answers with one; its body is the provider's
# revised_prompt, else the prompt.  Faults are the chat reply's codes:
# 4xx PROVIDER_REJECTED, 5xx PROVIDER_FAILED, no answer in time TIMEOUT,
# not JSON / no image / not base64 / over 4 MiB MALFORMED; ai_cancel
# CANCELLED; none stores anything.  A "text" session on the same server
# still gets a streamed chat reply.
#
# Why: the image path reads a whole answer instead of a stream, so its
# bounds and faults are its own; a fault must never leave a half-stored
# message or a session the assistant is "busy" in forever.

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
use Collab::AITest qw(write_key ai_conf say_ ai_events ops);


# --- helpers ---------------------------------------------------------------

my $KEY = 'sk-mock-094-'
    . join('', map { sprintf '%02x', int rand 256 } 1 .. 8);

# --- one server, mention (the default) ----------------------------------------

my $t = Collab::Test->new;
$t->start_pg;

write_key($t, $KEY);

my $mock = Collab::MockAI->start(dir => $t->dir);

$t->start_nginx(ai_conf($mock, timeout => '3s'));

my $dbh = $t->pg_dbh;

sub ai_rows {
    my ($slug) = @_;
    return $dbh->selectall_arrayref(
        "SELECT m.seq, m.body, m.metadata FROM chat_messages m
         JOIN chat_sessions s ON s.id = m.session_id
         WHERE s.slug = ? AND m.kind = 'ai' ORDER BY m.seq", undef, $slug);
}

my $ann = Collab::Chat->open($t, user => 'ann', name => 'Ann');
my $bob = Collab::Chat->open($t, user => 'bob', name => 'Bob');

my $r = $ann->req(op => 'create', title => 'pictures', isPublic => \1,
                  type => 'text-to-image');
my $slug = $r->{session}{id} // die explain($r);
is($r->{session}{type}, 'text-to-image', 'a text-to-image session');
$_->req(op => 'join', session => $slug)->{op} eq 'joined' or die 'join'
    for $ann, $bob;

sub nreq { scalar(() = $mock->requests) }


# --- a picture ----------------------------------------------------------------

my $n0 = nreq();
my $q = say_($ann, $slug, '@ai, a red square');
my $data_url = 'data:image/png;base64,' . Collab::MockAI::image_b64();

for my $c ($bob, $ann) {
    my @e = ai_events($c, $q);
    is(ops(@e), 'ai_progress message', $c->user
       . ': ai_progress, then the message') or diag(explain(\@e));
    is_deeply([@{ $e[0] }{qw(session replyTo stage)}],
              [$slug, $q, 'generating'], '  ai_progress {session, replyTo, '
              . 'stage: generating}') or diag(explain($e[0]));
    my $m = $e[-1];
    is_deeply([@$m{qw(kind user userName body clientMsgId)}],
              ['ai', undef, 'AI', 'revised: a red square', "ai:$q"],
              '  the message: kind ai, the revised prompt as its body')
        or diag(explain($m));
    is_deeply($m->{metadata},
              { image => $data_url, replyTo => $q, model => 'mock/image-1' },
              '  metadata {image: data URL, replyTo, model}')
        or diag(explain($m->{metadata}));
}

my @req = $mock->requests;
is(scalar(@req) - $n0, 1, 'one request to the provider');
my $req = $req[-1];
is($req->{path}, '/v1/images/generations', '  to /images/generations');
is_deeply($req->{body}, { model => 'mock/image-1', prompt => 'a red square',
                          n => 1, response_format => 'b64_json' },
          '  {model, prompt without the mention, n: 1, '
          . 'response_format: b64_json}') or diag(explain($req->{body}));
is($req->{authorization}, "Bearer $KEY", '  with the key');
like($req->{content_type} // '', qr{^application/json}, '  JSON');

my $rows = ai_rows($slug);
is(scalar @$rows, 1, 'stored once');
is(decode_json($rows->[0][2])->{image}, $data_url, '  with the image');

$r = $bob->req(op => 'history', session => $slug);
my ($h) = grep { $_->{kind} eq 'ai' } @{ $r->{messages} // [] };
is($h->{metadata}{image}, $data_url, 'history has it too');

# the provider's URL
$q = say_($bob, $slug, '@ai [url] a blue circle');
my @e = ai_events($ann, $q);
is(ops(@e), 'ai_progress message', '[url]: progress, then the message');
is($e[-1]{metadata}{image}, Collab::MockAI::image_url(),
   '  metadata.image is the provider\'s URL');
is($e[-1]{body}, '[url] a blue circle', '  the body is the prompt');
ai_events($bob, $q);

# the same trigger rules: a message without "@ai" asks for nothing
$n0 = nreq();
say_($ann, $slug, 'just talking about pictures');
$q = say_($ann, $slug, '@ai [url] after the chatter');
@e = ai_events($bob, $q);
my $first = $bob->take(sub { $_->{op} =~ /^ai_/ }, 0.3);
is(ops(@e), 'ai_progress message',
   'a message without @ai is not a prompt (the next one is answered)');
ok(!$first, '  and nothing else came');
is(nreq() - $n0, 1, '  one request');
ai_events($ann, $q);


# --- faults -------------------------------------------------------------------

my @faults = (
    ['[500]',     'PROVIDER_FAILED'],
    ['[429]',     'PROVIDER_REJECTED'],
    ['[garbage]', 'MALFORMED'],
    ['[noimage]', 'MALFORMED'],
    ['[badb64]',  'MALFORMED'],
    ['[huge]',    'MALFORMED'],
    ['[hang]',    'TIMEOUT'],
);

my $stored = scalar @{ ai_rows($slug) };

for my $f (@faults) {
    my ($marker, $code) = @$f;
    $q = say_($ann, $slug, "\@ai $marker a picture");
    for my $c ($bob, $ann) {
        my @e = ai_events($c, $q, 20);
        is(ops(@e), "ai_progress ai_error:$code",
           $c->user . ": $marker: progress, then ai_error $code")
            or diag(explain(\@e));
    }
}
is(scalar @{ ai_rows($slug) }, $stored, 'no fault stored anything');

$q = say_($ann, $slug, '@ai [hang] to be cancelled');
@e = ai_events($bob, $q, 0.5);
is(ops(@e), 'ai_progress', 'a hanging request: progress');
$r = $bob->req(op => 'ai_cancel', session => $slug);
is($r->{op}, 'ai_cancelled', 'ai_cancel');
for my $c ($bob, $ann) {
    my @e = ai_events($c, $q, 5);
    is(ops($e[-1]), 'ai_error:CANCELLED', $c->user . ': ai_error CANCELLED')
        or diag(explain(\@e));
}
is(scalar @{ ai_rows($slug) }, $stored, '  nothing stored');

# after all that the session is not stuck
$q = say_($bob, $slug, '@ai one more');
@e = ai_events($ann, $q);
is(ops(@e), 'ai_progress message', 'the next picture is made')
    or diag(explain(\@e));
ai_events($bob, $q);


# --- a text session on the same server still chats ---------------------------

$r = $ann->req(op => 'create', title => 'words', isPublic => \1);
my $slug2 = $r->{session}{id};
$ann->req(op => 'join', session => $slug2);
$q = say_($ann, $slug2, '@ai [fast] hello');
@e = ai_events($ann, $q);
is($e[-1]{op} . ':' . ($e[-1]{kind} // ''), 'message:ai',
   'a text session: a chat reply') or diag(explain(\@e));
ok(!grep({ $_->{op} eq 'ai_progress' } @e), '  without ai_progress');
ok(!exists $e[-1]{metadata}{image}, '  and without an image');
is(($mock->requests)[-1]{path}, '/v1/chat/completions',
   '  from /chat/completions');

my $log = $t->error_log;
like($log, qr/collab: ai: the provider's image answer is larger than/,
     '[huge] was cut at the bound (error.log)');
ok(index($log, $KEY) < 0, 'the key is not in error.log');

$mock->stop;

done_testing();
