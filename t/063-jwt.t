#!/usr/bin/perl
#
# 063-jwt.t: the built-in HS256 token check (collab_jwt_secret_file) on
# the WebSocket upgrade and on the HTTP API (issue 6).
#
# A valid token from Authorization: Bearer, from the collab_jwt_cookie
# cookie or from the access_token argument identifies the user (sub,
# name); every bad token is refused with 401 and creates no user: no
# token, a wrong signature, alg "none", alg HS512, expired, not yet
# valid, the wrong audience or issuer, malformed segments.  A token that
# expires while its WebSocket is open closes it with 4001.
#
# Why: sites without an auth proxy rely on this check alone; each way to
# get it wrong must be refused.  Tokens are made here with Digest::SHA.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url);
use Mojo::JSON qw(encode_json decode_json);
use Collab::Test;

my $KEY = 'test-secret-0123456789';

my $t = Collab::Test->new;
$t->start_pg;

open my $fh, '>', $t->dir . '/jwt.key' or die;
print $fh "$KEY\n";                     # the trailing newline is stripped
close $fh;

$t->start_nginx(<<'EOF');
    collab_postgres "%%PG_DSN%%";

    server {
        listen 127.0.0.1:%%PORT%%;

        collab_jwt_secret_file  %%TESTDIR%%/jwt.key;
        collab_jwt_audience     chat;
        collab_jwt_issuer       https://site.example;
        collab_jwt_cookie       collab_token;
        collab_jwt_leeway       0;

        location = /ws  { collab_websocket; }
        location /api/  { collab_api; }
    }
EOF

sub b64j { encode_base64url(encode_json($_[0])) }

sub token {
    my (%o) = @_;
    my $header = $o{header} // { alg => 'HS256', typ => 'JWT' };
    my $claims = $o{claims} // {};
    my $h = b64j($header);
    my $p = b64j({ sub => 'ann', name => 'Ann', aud => 'chat',
                   iss => 'https://site.example', exp => time + 600,
                   %$claims });
    my $sig = exists $o{sig} ? $o{sig}
            : encode_base64url(hmac_sha256("$h.$p", $o{key} // $KEY));
    return "$h.$p.$sig";
}

sub upgrade_status {
    my (%h) = @_;
    my $path = delete $h{path} // '/ws';
    my $req = "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        . "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        . "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        . "Sec-WebSocket-Version: 13\r\n"
        . "Sec-WebSocket-Protocol: collab.v1\r\n"
        . join('', map { "$_: $h{$_}\r\n" } sort keys %h)
        . "Connection: close\r\n\r\n";
    my ($status) = $t->http_raw($req);
    return $status;
}

sub api_status {
    my ($path, %h) = @_;
    my $req = "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        . join('', map { "$_: $h{$_}\r\n" } sort keys %h)
        . "Connection: close\r\n\r\n";
    my ($status, undef, $body) = $t->http_raw($req);
    return ($status, $body);
}

my $dbh = $t->pg_dbh;
sub users { ($dbh->selectrow_array('SELECT count(*) FROM users'))[0] }


# --- valid tokens, each way of passing one ------------------------------------

is(upgrade_status(Authorization => 'Bearer ' . token()), 101,
   'Authorization: Bearer: 101');
is(upgrade_status(Cookie => 'other=1; collab_token=' . token()), 101,
   'the collab_jwt_cookie cookie: 101');
is(upgrade_status(path => '/ws?access_token=' . token()), 101,
   'the access_token argument: 101');

my ($st, $body) = api_status('/api/sessions',
                             Authorization => 'Bearer ' . token());
is($st, 200, 'the API with a token: 200');

# the identity is the token's: sub and name
my $s = $t->ws_raw('/ws', 'Sec-WebSocket-Protocol' => 'collab.v1',
                   Authorization => 'Bearer ' . token(
                       claims => { sub => 'zoe', name => 'Zoë' }));
$t->ws_send($s, opcode => 1,
            payload => encode_json({ op => 'create', title => 'mine' }));
my $f = $t->ws_read_frame($s, 10);
my $r = $f ? decode_json($f->{payload}) : {};
is($r->{op}, 'created', 'a token user creates a session');
is($r->{session}{owner}, 'zoe', 'owned by the token\'s sub');
my ($name) = $dbh->selectrow_array(
    q{SELECT display_name FROM users WHERE external_id = 'zoe'});
is($name, "Zo\x{c3}\x{ab}", 'with the token\'s name, byte for byte');
close $s;


# --- bad tokens: 401, no user created -------------------------------------------

my $before = users();
my $h = b64j({ alg => 'HS256', typ => 'JWT' });
my $p = b64j({ sub => 'mallory', aud => 'chat', iss => 'https://site.example',
               exp => time + 600 });

my @bad = (
    ['no token', undef],
    ['a wrong signature', token(key => 'another key')],
    ['a flipped signature bit', do {
        my $tk = token(claims => { sub => 'mallory' });
        my ($a, $b, $c) = split /\./, $tk;
        substr($c, 0, 1) = substr($c, 0, 1) eq 'A' ? 'B' : 'A';
        "$a.$b.$c" }],
    ['alg none', b64j({ alg => 'none' }) . ".$p."],
    ['alg none, signed anyway', token(header => { alg => 'none' },
                                      claims => { sub => 'mallory' })],
    ['alg HS512', token(header => { alg => 'HS512' },
                        claims => { sub => 'mallory' })],
    ['no alg', token(header => { typ => 'JWT' }, claims => { sub => 'mallory' })],
    ['expired', token(claims => { sub => 'mallory', exp => time - 10 })],
    ['not yet valid', token(claims => { sub => 'mallory', nbf => time + 600 })],
    ['the wrong audience', token(claims => { sub => 'mallory',
                                             aud => 'other' })],
    ['the wrong issuer', token(claims => { sub => 'mallory',
                                           iss => 'https://evil.example' })],
    ['no sub', token(claims => { sub => undef })],
    ['two segments', "$h.$p"],
    ['four segments', token() . '.x'],
    ['padding in a segment', "$h=.$p.x"],
    ['invalid characters', "$h.$p.\$\$\$"],
    ['garbage', 'not-a-token'],
);

for my $case (@bad) {
    my ($why, $tk) = @$case;
    my %hdr = defined $tk ? (Authorization => "Bearer $tk") : ();
    is(upgrade_status(%hdr), 401, "upgrade with $why: 401");
    my ($ast) = api_status('/api/sessions', %hdr);
    is($ast, 401, "API with $why: 401");
}

is(users(), $before, 'no user row for a refused token');

like($t->error_log, qr/token refused: /, 'refusals are logged');


# --- expiry on a live WebSocket: close 4001 ---------------------------------------

$s = $t->ws_raw('/ws', 'Sec-WebSocket-Protocol' => 'collab.v1',
                Authorization => 'Bearer '
                    . token(claims => { exp => int(time) + 2 }));
my $code;
my $end = time + 10;
while (time < $end) {
    my $fr = $t->ws_read_frame($s, 1) // next;
    if ($fr->{opcode} == 8) {
        $code = $fr->{close_code};
        last;
    }
}
is($code, 4001, 'the WebSocket closes with 4001 when its token expires');

done_testing;
