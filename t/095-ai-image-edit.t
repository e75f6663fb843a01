#!/usr/bin/perl
#
# 095-ai-image-edit.t: pictures attached to messages, and the assistant
# in an image-to-image session (issue 9).
#
# A send (or a POST of a message) may carry "image": a
# data:image/png|jpeg|webp;base64 URL, kept in the message's
# metadata.image and shown in the message event and history like the
# assistant's pictures.  Anything else (an http URL: the server never
# fetches one; another type; bad base64; not a string) is BAD_IMAGE and
# stores nothing; a frame over collab_max_message_size is closed 1009;
# a user who is not a participant gets ACCESS_DENIED.
#
# In a session of type "image-to-image" a message that calls on the
# assistant (the collab_ai_trigger rules) POSTs multipart/form-data
# {model, prompt, n: 1, response_format: b64_json, image} to
# <endpoint>/images/edits, the image being the one attached to that
# message, else the newest one in the session (the assistant's own or a
# user's), read from PostgreSQL.  No image, or only a provider's http
# URL, is ai_error NO_IMAGE with nothing asked nor stored.  Then it is a
# text-to-image reply: ai_progress to everyone, one stored message of
# kind ai with metadata.image, the same faults (a 500, a cancel store
# nothing).
#
# Why: a user's picture is untrusted bytes sent on to a provider; the
# tests show the exact bytes arrive, that only data: URLs pass, and that
# a fault never leaves a half-stored message or a busy session.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use MIME::Base64 qw(encode_base64 decode_base64);
use Mojo::JSON qw(decode_json);
use Collab::Test;
use Collab::Chat;
use Collab::Api;
use Collab::MockAI;
use Collab::AITest qw(write_key ai_conf say_ ai_events ops);


my $KEY = 'sk-mock-095-'
    . join('', map { sprintf '%02x', int rand 256 } 1 .. 8);

my $t = Collab::Test->new;
$t->start_pg;

write_key($t, $KEY);

my $mock = Collab::MockAI->start(dir => $t->dir);

$t->start_nginx(ai_conf($mock, timeout => '3s',
                        chat => 'collab_max_message_size 64k;',
                        locations => <<'X'));
        location /collab/api/ {
            collab_api;
            collab_user $http_x_user_id;
            collab_user_name $http_x_user_name;
            client_body_buffer_size 128k;
            client_max_body_size 1m;
        }
X

my $dbh = $t->pg_dbh;
my $api = Collab::Api->new($t);

sub rows {
    my ($slug, $kind) = @_;
    return $dbh->selectall_arrayref(
        "SELECT m.seq, m.kind, m.body, m.metadata FROM chat_messages m
         JOIN chat_sessions s ON s.id = m.session_id
         WHERE s.slug = ?" . ($kind ? " AND m.kind = '$kind'" : '')
        . " ORDER BY m.seq", undef, $slug);
}

sub nrows { scalar @{ rows(@_) } }
sub nreq { scalar(() = $mock->requests) }

my $nmsg = 0;

# sends with an image; the reply (ack or error)
sub send_img {
    my ($c, $slug, $body, $image, %o) = @_;
    return $c->req(op => 'send', session => $slug, body => $body,
                   clientMsgId => 'i' . ++$nmsg . '-' . int(rand 1e9),
                   (defined $image ? (image => $image) : ()), %o);
}

# a picture of $n random bytes behind a PNG signature, as the user's
# data: URL and as its bytes
sub picture {
    my ($n, $type) = @_;
    my $bytes = "\x89PNG\r\n\x1a\n"
        . join('', map { chr int rand 256 } 1 .. $n);
    return ("data:image/" . ($type // 'png') . ';base64,'
            . encode_base64($bytes, ''), $bytes);
}

my $ann = Collab::Chat->open($t, user => 'ann', name => 'Ann');
my $bob = Collab::Chat->open($t, user => 'bob', name => 'Bob');
my $eve = Collab::Chat->open($t, user => 'eve', name => 'Eve');

my $r = $ann->req(op => 'create', title => 'edits', isPublic => \1,
                  type => 'image-to-image');
my $slug = $r->{session}{id} // die explain($r);
is($r->{session}{type}, 'image-to-image', 'an image-to-image session');
$_->req(op => 'join', session => $slug)->{op} eq 'joined' or die 'join'
    for $ann, $bob;


# --- no picture yet: NO_IMAGE -------------------------------------------------

my $n0 = nreq();
my $q = say_($ann, $slug, '@ai make it blue');
for my $c ($bob, $ann) {
    my @e = ai_events($c, $q);
    is(ops(@e), 'ai_error:NO_IMAGE', $c->user
       . ': no picture in the session: ai_error NO_IMAGE')
        or diag(explain(\@e));
}
is(nreq() - $n0, 0, '  the provider was not asked');
is(nrows($slug, 'ai'), 0, '  nothing stored');


# --- a picture attached to the question ---------------------------------------

my ($url, $bytes) = picture(20000);
$n0 = nreq();
$r = send_img($ann, $slug, '@ai, make it blue', $url);
is($r->{op}, 'ack', 'a send with an image is acked') or diag(explain($r));
$q = $r->{seq};

my $um = $bob->take(sub { $_->{op} eq 'message' && $_->{seq} == $q });
is_deeply($um->{metadata}, { image => $url },
          '  the others get it with metadata.image')
    or diag(explain($um));
is($um->{kind}, 'user', '  a user message');

my @final;
for my $c ($bob, $ann) {
    my @e = ai_events($c, $q);
    is(ops(@e), 'ai_progress message', $c->user
       . ': ai_progress, then the message') or diag(explain(\@e));
    is_deeply([@{ $e[0] }{qw(session replyTo stage)}],
              [$slug, $q, 'generating'], '  ai_progress {stage: generating}')
        or diag(explain($e[0]));
    push @final, $e[-1];
}
my $ai_image = 'data:image/png;base64,' . Collab::MockAI::image_b64();
is($final[0]{seq}, $q + 1, 'the reply has the next seq');
is_deeply($final[0], $final[1], '  the same message for both');
is_deeply([@{ $final[0] }{qw(kind user userName body clientMsgId)}],
          ['ai', undef, 'AI', 'revised: make it blue', "ai:$q"],
          '  kind ai, the revised prompt as its body')
    or diag(explain($final[0]));
is_deeply($final[0]{metadata},
          { image => $ai_image, replyTo => $q, model => 'mock/image-1' },
          '  metadata {image, replyTo, model}')
    or diag(explain($final[0]{metadata}));

my @req = $mock->requests;
is(scalar(@req) - $n0, 1, 'one request to the provider');
my $req = $req[-1];
is($req->{path}, '/v1/images/edits', '  to /images/edits');
like($req->{content_type} // '', qr{^multipart/form-data; *boundary=},
     '  multipart/form-data');
is($req->{authorization}, "Bearer $KEY", '  with the key');
is_deeply([@{ $req->{body} }{qw(model prompt n response_format)}],
          ['mock/image-1', 'make it blue', '1', 'b64_json'],
          '  {model, prompt without the mention, n: 1, response_format}')
    or diag(explain($req->{body}));
is_deeply([@{ $req->{body}{image} // {} }{qw(filename content_type size)}],
          ['image.png', 'image/png', length $bytes],
          '  the image part: image.png, image/png, its size');
ok(decode_base64($req->{body}{image}{b64} // '') eq $bytes,
   '  the bytes that arrived are the bytes attached');

my $rows = rows($slug);
is_deeply([map { $_->[1] } @$rows[-2, -1]], ['user', 'ai'],
          'stored: the question and the reply');
is(decode_json($rows->[-2][3])->{image}, $url, '  the question with its image');
is($rows->[-1][0], $final[0]{seq}, '  the reply with the seq sent');

$r = $bob->req(op => 'history', session => $slug);
my ($h) = grep { $_->{seq} == $q } @{ $r->{messages} // [] };
is($h->{metadata}{image}, $url, 'history has the attached image');

my $eve_join = $eve->req(op => 'join', session => $slug);
my ($jm) = grep { $_->{seq} == $q } @{ $eve_join->{messages} // [] };
is($jm->{metadata}{image}, $url, 'so has the join page');
$eve->req(op => 'leave', session => $slug);


# --- no picture attached: the session's newest --------------------------------

# the assistant's own picture is the newest
$n0 = nreq();
$q = say_($bob, $slug, '@ai now add a hat');
my @e = ai_events($ann, $q);
is(ops(@e), 'ai_progress message',
   'no picture attached: the newest in the session (the assistant\'s)')
    or diag(explain(\@e));
ai_events($bob, $q);
is(nreq() - $n0, 1, '  one request');
$req = ($mock->requests)[-1];
ok(decode_base64($req->{body}{image}{b64} // '')
   eq decode_base64(Collab::MockAI::image_b64()),
   '  the provider got the assistant\'s picture');

# a user's earlier picture, a JPEG, in a message that asks nothing
my ($jpeg, $jbytes) = picture(3000, 'jpeg');
$r = send_img($bob, $slug, 'here is a cat', $jpeg);
is($r->{op}, 'ack', 'a JPEG without @ai is stored');
my $first = $ann->take(sub { $_->{op} =~ /^ai_/ }, 0.5);
ok(!$first, '  and asks the assistant nothing');
$q = say_($ann, $slug, '@ai put it in a box');
@e = ai_events($bob, $q);
is(ops(@e), 'ai_progress message', 'the next question edits that one')
    or diag(explain(\@e));
ai_events($ann, $q);
$req = ($mock->requests)[-1];
is_deeply([@{ $req->{body}{image} // {} }{qw(filename content_type)}],
          ['image.jpg', 'image/jpeg'], '  image.jpg, image/jpeg');
ok(decode_base64($req->{body}{image}{b64} // '') eq $jbytes,
   '  with the user\'s bytes');

# a provider's http URL is no source: the server fetches no URL
$q = send_img($ann, $slug, '@ai [url] a sketch', $url)->{seq};
@e = ai_events($bob, $q);
is($e[-1]{metadata}{image}, Collab::MockAI::image_url(),
   'a reply stored with the provider\'s URL');
ai_events($ann, $q);
my $stored = nrows($slug, 'ai');
$n0 = nreq();
$q = say_($bob, $slug, '@ai and again');
for my $c ($ann, $bob) {
    @e = ai_events($c, $q);
    is(ops(@e), 'ai_error:NO_IMAGE', $c->user
       . ': the newest is an http URL: NO_IMAGE') or diag(explain(\@e));
}
is(nreq() - $n0, 0, '  the provider was not asked');
is(nrows($slug, 'ai'), $stored, '  nothing stored');


# --- bad images ---------------------------------------------------------------

my $all = nrows($slug);
Collab::Chat::settle(0.3, $bob);
$bob->grab(sub { 1 });          # what came before
my @bad = (
    ['an https URL', 'https://images.example.test/cat.png'],
    ['an http URL',  'http://127.0.0.1/cat.png'],
    ['a GIF',        'data:image/gif;base64,R0lGODlhAQABAAAAACw='],
    ['no base64',    'data:image/png,rawbytes'],
    ['bad base64',   'data:image/png;base64,iVBOR"><script>'],
    ['cut base64',   'data:image/png;base64,iVBORw0KGgo'],
    ['bad padding',  'data:image/png;base64,iV=BORw0'],
    ['no data',      'data:image/png;base64,'],
    ['a number',     42],
    ['an object',    { url => 'data:image/png;base64,iVBORw0K' }],
);
for my $b (@bad) {
    my ($what, $image) = @$b;
    $r = send_img($ann, $slug, '@ai use this', $image);
    is("$r->{op}:" . ($r->{code} // ''), 'error:BAD_IMAGE',
       "image: $what: BAD_IMAGE") or diag(explain($r));
}
like($r->{message} // '', qr/data:image/, '  the message says what is taken');
is(nrows($slug), $all, '  nothing stored');
ok(!$bob->take(sub { $_->{op} eq 'message' || $_->{op} =~ /^ai_/ }, 0.3),
   '  nothing reached the others');

# over collab_max_message_size: the frame is refused
my $big = Collab::Chat->open($t, user => 'ann', name => 'Ann');
$big->req(op => 'join', session => $slug);
my ($huge) = picture(60 * 1024);
send_img($big, $slug, '@ai too big', $huge, -timeout => 3);
is($big->{close_code}, 1009, 'an image over collab_max_message_size: 1009');
is(nrows($slug), $all, '  nothing stored');

# not a participant
$r = send_img($eve, $slug, '@ai mine', $url);
is("$r->{op}:" . ($r->{code} // ''), 'error:ACCESS_DENIED',
   'an image from someone who left the session: ACCESS_DENIED')
    or diag(explain($r));
is(nrows($slug), $all, '  nothing stored');


# --- faults -------------------------------------------------------------------

$stored = nrows($slug, 'ai');
for my $f (['[500]', 'PROVIDER_FAILED'], ['[401]', 'PROVIDER_REJECTED'],
           ['[garbage]', 'MALFORMED'])
{
    my ($marker, $code) = @$f;
    $q = send_img($ann, $slug, "\@ai $marker a hat", $url)->{seq};
    for my $c ($bob, $ann) {
        @e = ai_events($c, $q);
        is(ops(@e), "ai_progress ai_error:$code", $c->user
           . ": $marker: progress, then ai_error $code")
            or diag(explain(\@e));
    }
}
is(nrows($slug, 'ai'), $stored, 'no fault stored anything');

$q = send_img($ann, $slug, '@ai [hang] to be cancelled', $url)->{seq};
@e = ai_events($bob, $q, 0.5);
is(ops(@e), 'ai_progress', 'a hanging request: progress');
$r = $bob->req(op => 'ai_cancel', session => $slug);
is($r->{op}, 'ai_cancelled', 'ai_cancel');
for my $c ($bob, $ann) {
    @e = ai_events($c, $q, 5);
    is(ops($e[-1]), 'ai_error:CANCELLED', $c->user . ': ai_error CANCELLED')
        or diag(explain(\@e));
}
is(nrows($slug, 'ai'), $stored, '  nothing stored');

# the session is not stuck
$q = say_($bob, $slug, '@ai one more');
@e = ai_events($ann, $q);
is(ops(@e), 'ai_progress message', 'the next edit is made')
    or diag(explain(\@e));
ai_events($bob, $q);


# --- the HTTP API takes the same field ----------------------------------------

$all = nrows($slug);
$r = $api->call('ann', POST => "/sessions/$slug/messages",
                json => { body => '@ai x', clientMsgId => 'api-bad',
                          image => 'http://127.0.0.1/x.png' });
is("$r->{status} " . ($r->{json}{code} // ''), '400 BAD_IMAGE',
   'POST a message with an http image: 400 BAD_IMAGE')
    or diag(Collab::Api::brief($r));
is(nrows($slug), $all, '  nothing stored');

my ($aurl, $abytes) = picture(5000, 'webp');
$r = $api->call('ann', POST => "/sessions/$slug/messages",
                json => { body => '@ai sharpen', clientMsgId => 'api-ok',
                          image => $aurl });
is("$r->{status} " . ($r->{json}{op} // ''), '201 ack',
   'POST a message with a WebP: 201 ack') or diag(Collab::Api::brief($r));
$q = $r->{json}{seq} // 0;
$um = $bob->take(sub { $_->{op} eq 'message' && $_->{seq} == $q });
is($um->{metadata}{image}, $aurl, '  delivered with its image');
@e = ai_events($bob, $q);
is(ops(@e), 'ai_progress message', '  and edited by the assistant')
    or diag(explain(\@e));
ai_events($ann, $q);
$req = ($mock->requests)[-1];
is_deeply([@{ $req->{body}{image} // {} }{qw(filename content_type)}],
          ['image.webp', 'image/webp'], '  image.webp, image/webp');
ok(decode_base64($req->{body}{image}{b64} // '') eq $abytes,
   '  the bytes posted');

# a private session Eve is not in
$r = $ann->req(op => 'create', title => 'private', isPublic => \0,
               type => 'image-to-image');
my $private = $r->{session}{id};
$all = nrows($private);
$r = $api->call('eve', POST => "/sessions/$private/messages",
                json => { body => 'hi', clientMsgId => 'api-eve',
                          image => $aurl });
is("$r->{status} " . ($r->{json}{code} // ''), '403 ACCESS_DENIED',
   'POST an image to a session one is not in: 403 ACCESS_DENIED')
    or diag(Collab::Api::brief($r));
is(nrows($private), $all, '  nothing stored');


# --- other session types ------------------------------------------------------

# a text session keeps the picture and answers in words
$r = $ann->req(op => 'create', title => 'words', isPublic => \1);
my $slug2 = $r->{session}{id};
$ann->req(op => 'join', session => $slug2);
$r = send_img($ann, $slug2, '@ai [fast] what is this?', $url);
is($r->{op}, 'ack', 'a text session takes a picture too');
@e = ai_events($ann, $r->{seq});
is($e[-1]{op} . ':' . ($e[-1]{kind} // ''), 'message:ai',
   '  and gets a chat reply') or diag(explain(\@e));
ok(!grep({ $_->{op} eq 'ai_progress' } @e), '  without ai_progress');
is(($mock->requests)[-1]{path}, '/v1/chat/completions',
   '  from /chat/completions');

my $log = $t->error_log;
ok(index($log, $KEY) < 0, 'the key is not in error.log');

$mock->stop;

done_testing();
