# The WebSocket opening handshake (RFC 6455, 4.2.1 and 4.2.2) on the two
# kinds of WebSocket location: collab_echo (the conformance endpoint) and
# collab_websocket (the chat endpoint, subprotocol collab.v1).
#
# Why: the handshake is the only door into the module, and a browser or a
# proxy that gets a wrong answer fails in ways that are hard to trace.  A
# good request must get 101 with the exact Sec-WebSocket-Accept; every
# fault must get the status the issue names (400, 403 or 426 with
# "Sec-WebSocket-Version: 13") and never a 101.  Each request is written
# byte by byte over a plain socket, so the header variants are exactly
# what is listed in the tables below.

use strict;
use warnings;

use Test::More;
use Digest::SHA qw(sha1_base64);
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);
use Collab::Test;

my $t = Collab::Test->new;

# collab_websocket takes the user's identity from collab_user (issue 3);
# a fixed one here, where identity is not what is tested
my ($has_user) = $t->nginx_test_conf(<<'EOF');
    server { listen 127.0.0.1:%%PORT%%; location / { collab_user u; } }
EOF
my $USER = $has_user ? 'collab_user tester;' : '';

$t->start_nginx(<<"EOF");
    server {
        listen 127.0.0.1:%%PORT%%;

        location /echo { collab_echo; }
        location /chat { collab_websocket; $USER }

        location /echo-origin {
            collab_echo;
            collab_allowed_origins https://a.example;
        }

        location /chat-origin {
            collab_websocket;
            $USER
            collab_allowed_origins https://a.example http://c.example:8080;
        }
    }
EOF

# the example of RFC 6455, 1.3
my $KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
my $ACCEPT = 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=';

is(sha1_base64($KEY . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11') . '=',
   $ACCEPT, 'the test computes Sec-WebSocket-Accept as RFC 6455 does');

# request(%a): the raw upgrade request.  path, method (GET), version
# (HTTP/1.1), body; headers => [name => value, ...] replaces the default
# header of that name (undef drops it) or is appended; extra => [...]
# appends without replacing (for duplicated headers).
sub request {
    my (%a) = @_;

    my @h = (
        Host => '127.0.0.1:' . $t->port,
        Upgrade => 'websocket',
        Connection => 'Upgrade',
        'Sec-WebSocket-Key' => $KEY,
        'Sec-WebSocket-Version' => '13',
    );
    my @over = @{ $a{headers} // [] };
    while (my ($k, $v) = splice @over, 0, 2) {
        my $done = 0;
        for (my $i = 0; $i < @h; $i += 2) {
            next unless lc $h[$i] eq lc $k;
            $h[$i + 1] = $v;
            $done = 1;
        }
        push @h, $k, $v unless $done;
    }
    push @h, @{ $a{extra} // [] };

    my $req = sprintf "%s %s %s\r\n", $a{method} // 'GET',
        $a{path} // '/echo', $a{version} // 'HTTP/1.1';
    while (my ($k, $v) = splice @h, 0, 2) {
        $req .= "$k: $v\r\n" if defined $v;
    }
    return $req . "\r\n" . ($a{body} // '');
}

# --- good upgrades ----------------------------------------------------------

for my $path ('/echo', '/chat') {
    my ($status, $h) = $t->http_raw(request(path => $path));
    is($status, 101, "$path: a good upgrade gets 101");
    is($h->{'sec-websocket-accept'}, $ACCEPT,
       "$path: Sec-WebSocket-Accept is base64(SHA-1(key . GUID))");
    like($h->{upgrade} // '', qr/^websocket$/i, "$path: Upgrade: websocket");
    like($h->{connection} // '', qr/\bupgrade\b/i,
         "$path: Connection: upgrade");
    ok(!exists $h->{'sec-websocket-protocol'},
       "$path: no subprotocol chosen when none is offered");

    # the harness' own check (random key) agrees
    my $s = eval { $t->ws_raw($path) };
    ok($s, "$path: ws_raw upgrade with a random key") or diag($@);
    close $s if $s;
}

# header variants that must still be accepted
my @accepted = (
    ['Connection: keep-alive, Upgrade (a token list, as Firefox sends)',
     headers => [Connection => 'keep-alive, Upgrade']],
    ['Connection: upgrade in lower case',
     headers => [Connection => 'upgrade']],
    ['Upgrade: WebSocket in mixed case',
     headers => [Upgrade => 'WebSocket']],
    ['header names in odd case',
     headers => [Upgrade => undef, Connection => undef,
                 'Sec-WebSocket-Key' => undef,
                 'Sec-WebSocket-Version' => undef,
                 UPGRADE => 'websocket', connection => 'Upgrade',
                 'sec-websocket-key' => $KEY,
                 'SEC-WEBSOCKET-VERSION' => '13']],
    ['Content-Length: 0 is no body',
     headers => ['Content-Length' => '0']],
);

for my $c (@accepted) {
    my ($name, %a) = @$c;
    for my $path ('/echo', '/chat') {
        my ($status, $h) = $t->http_raw(request(path => $path, %a));
        is($status, 101, "$path: accepted: $name");
        is($h->{'sec-websocket-accept'}, $ACCEPT,
           "$path: $name: right Sec-WebSocket-Accept");
    }
}

# --- faults: 400 --------------------------------------------------------------

my @bad = (
    ['POST', method => 'POST'],
    # a HEAD answer has a Content-Length and no body: do not wait for one
    ['HEAD', method => 'HEAD', timeout => 1],
    ['HTTP/1.0', version => 'HTTP/1.0'],
    ['no Upgrade header', headers => [Upgrade => undef]],
    ['Upgrade: h2c', headers => [Upgrade => 'h2c']],
    ['Upgrade: websocketx', headers => [Upgrade => 'websocketx']],
    ['no Connection header', headers => [Connection => undef]],
    ['Connection: keep-alive', headers => [Connection => 'keep-alive']],
    ['Connection: upgraded', headers => [Connection => 'upgraded']],
    ['no Sec-WebSocket-Key', headers => ['Sec-WebSocket-Key' => undef]],
    ['empty Sec-WebSocket-Key', headers => ['Sec-WebSocket-Key' => '']],
    ['short Sec-WebSocket-Key (8 bytes)',
     headers => ['Sec-WebSocket-Key' => 'AAAAAAAAAAA=']],
    ['Sec-WebSocket-Key of 17 bytes',
     headers => ['Sec-WebSocket-Key' => 'AAAAAAAAAAAAAAAAAAAAAAA=']],
    ['Sec-WebSocket-Key of 20 bytes',
     headers => ['Sec-WebSocket-Key' => 'AAAAAAAAAAAAAAAAAAAAAAAAAAA=']],
    ['Sec-WebSocket-Key not base64 (24 chars)',
     headers => ['Sec-WebSocket-Key' => '!!!!!!!!!!!!!!!!!!!!!!==']],
    ['Sec-WebSocket-Key with a space inside',
     headers => ['Sec-WebSocket-Key' => 'dGhlIHNhbXBsZ SBub25jZQ==']],
    ['Sec-WebSocket-Key without padding',
     headers => ['Sec-WebSocket-Key' => 'dGhlIHNhbXBsZSBub25jZQ']],
    ['two Sec-WebSocket-Key headers',
     extra => ['Sec-WebSocket-Key' => 'AQIDBAUGBwgJCgsMDQ4PEA==']],
    ['a body (Content-Length)',
     headers => ['Content-Length' => 5], body => 'hello'],
    ['a body (chunked)',
     headers => ['Transfer-Encoding' => 'chunked'],
     body => "5\r\nhello\r\n0\r\n\r\n"],
);

for my $c (@bad) {
    my ($name, %a) = @$c;
    my $timeout = delete $a{timeout};
    for my $path ('/echo', '/chat') {
        my ($status, $h) = $t->http_raw(request(path => $path, %a),
                                        timeout => $timeout);
        is($status, 400, "$path: 400 for $name");
        ok(!exists $h->{'sec-websocket-accept'},
           "$path: $name: no Sec-WebSocket-Accept");
    }
}

# --- faults: 426 --------------------------------------------------------------

my @version = (
    ['no Sec-WebSocket-Version', headers => ['Sec-WebSocket-Version' => undef]],
    ['Sec-WebSocket-Version: 8', headers => ['Sec-WebSocket-Version' => '8']],
    ['Sec-WebSocket-Version: 12',
     headers => ['Sec-WebSocket-Version' => '12']],
    ['Sec-WebSocket-Version: 14',
     headers => ['Sec-WebSocket-Version' => '14']],
    ['Sec-WebSocket-Version: 130',
     headers => ['Sec-WebSocket-Version' => '130']],
    ['two Sec-WebSocket-Version headers (13 and 8)',
     extra => ['Sec-WebSocket-Version' => '8']],
);

for my $c (@version) {
    my ($name, %a) = @$c;
    for my $path ('/echo', '/chat') {
        my ($status, $h) = $t->http_raw(request(path => $path, %a));
        is($status, 426, "$path: 426 for $name");
        is($h->{'sec-websocket-version'}, '13',
           "$path: $name: the 426 says Sec-WebSocket-Version: 13");
        ok(!exists $h->{'sec-websocket-accept'},
           "$path: $name: no Sec-WebSocket-Accept");
    }
}

# --- Origin allow-list ------------------------------------------------------

my @origin = (
    ['/echo-origin', 'https://a.example', 101],
    ['/echo-origin', 'HTTPS://A.EXAMPLE', 101],     # RFC 6454: caseless
    ['/echo-origin', 'https://b.example', 403],
    ['/echo-origin', 'http://a.example', 403],
    ['/echo-origin', 'https://a.example:8443', 403],
    ['/echo-origin', 'https://a.example.evil', 403],
    ['/echo-origin', 'null', 403],
    ['/echo-origin', undef, 101],                   # not a browser
    ['/chat-origin', 'https://a.example', 101],
    ['/chat-origin', 'http://c.example:8080', 101],
    ['/chat-origin', 'http://c.example', 403],
    ['/chat-origin', 'https://b.example', 403],
    ['/chat-origin', undef, 101],
    ['/echo', 'https://b.example', 101],            # no list: any origin
);

for my $c (@origin) {
    my ($path, $origin, $want) = @$c;
    my ($status, $h) = $t->http_raw(request(path => $path,
        headers => [Origin => $origin]));
    is($status, $want, "$path: Origin " . ($origin // '(none)')
                       . " gets $want");
    if ($want == 101) {
        is($h->{'sec-websocket-accept'}, $ACCEPT,
           "$path: Origin " . ($origin // '(none)') . ': accept key');
    }
}

my ($st) = $t->http_raw(request(path => '/echo-origin',
    extra => [Origin => 'https://a.example', Origin => 'https://b.example']));
is($st, 403, 'two Origin headers, one not allowed: 403');

# --- subprotocol --------------------------------------------------------------

my @proto = (
    ['/chat', 'foo, collab.v1', 'collab.v1'],
    ['/chat', 'collab.v1', 'collab.v1'],
    ['/chat', 'collab.v1, foo', 'collab.v1'],
    ['/chat', 'foo', undef],
    ['/chat', 'collab.v2', undef],
    ['/chat', 'collab.v1x', undef],
    ['/chat', 'COLLAB.V1', undef],          # tokens are case-sensitive
    ['/echo', 'foo, collab.v1', undef],
    ['/echo', 'collab.v1', undef],
);

for my $c (@proto) {
    my ($path, $offer, $want) = @$c;
    my ($status, $h) = $t->http_raw(request(path => $path,
        headers => ['Sec-WebSocket-Protocol' => $offer]));
    is($status, 101, "$path: offering '$offer' is accepted");
    is($h->{'sec-websocket-protocol'}, $want,
       "$path: offering '$offer' selects "
       . (defined $want ? "'$want'" : 'nothing'));
}

# the protocol offered in two separate headers
my ($status2, $h2) = $t->http_raw(request(path => '/chat',
    extra => ['Sec-WebSocket-Protocol' => 'foo',
              'Sec-WebSocket-Protocol' => 'collab.v1']));
is($status2, 101, 'two Sec-WebSocket-Protocol headers: 101');
is($h2->{'sec-websocket-protocol'}, 'collab.v1',
   'two Sec-WebSocket-Protocol headers: collab.v1 selected');

# --- the connection is usable after the handshake ---------------------------

{
    my $s = $t->ws_raw('/echo', Connection => 'keep-alive, Upgrade');
    $t->ws_send($s, opcode => 1, payload => 'after keep-alive, Upgrade');
    my $f = $t->ws_read_frame($s, 10);
    is($f && $f->{payload}, 'after keep-alive, Upgrade',
       'a connection upgraded with "keep-alive, Upgrade" echoes');
    close $s;
}

{
    # bytes sent in the same packet as the upgrade request are not lost
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $t->port, Proto => 'tcp') or die "connect: $!";
    binmode $s;
    syswrite($s, request(path => '/echo')
        . Collab::Test::ws_frame(opcode => 1, payload => 'early bird'));
    my $buf = '';
    my $end = time + 10;
    my $sel = IO::Select->new($s);
    while ($buf !~ /\r\n\r\n.*early bird/s && time < $end) {
        next unless $sel->can_read(0.5);
        my $n = sysread($s, $buf, 4096, length $buf);
        last unless $n;
    }
    like($buf, qr{^HTTP/1\.1 101 .*\r\n\r\n\x81\x0aearly bird}s,
         'a frame pipelined behind the upgrade request is echoed');
    close $s;
}

done_testing();
