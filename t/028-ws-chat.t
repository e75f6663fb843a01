# The collab.v1 endpoint (collab_websocket) at the level issue 2 defines
# it: JSON requests in text frames, a "ping" op answered with "pong"
# carrying the request's "ref" back, anything not understood answered
# with an "error" op and code BAD_REQUEST while the connection stays open,
# and binary frames refused with close 1003 (unsupported data).
#
# Why: this is the socket the chat client will speak to; later issues add
# ops, and these answers are the contract they extend (docs/PROTOCOL.md).
# Replies are decoded as JSON and compared as data, not as strings.

use strict;
use warnings;

use Test::More;
use JSON::PP;
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

        location /chat { collab_websocket; $USER }
    }
EOF

my $json = JSON::PP->new->utf8->canonical;

sub f { Collab::Test::ws_frame(@_) }

sub send_raw {
    my ($s, $bytes) = @_;
    local $SIG{PIPE} = 'IGNORE';
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($s, $bytes, length($bytes) - $off, $off);
        return 0 unless defined $n;
        $off += $n;
    }
    return 1;
}

sub open_chat {
    my ($s, $st, $h) = $t->ws_raw('/chat',
        'Sec-WebSocket-Protocol' => 'collab.v1');
    is($h->{'sec-websocket-protocol'}, 'collab.v1', 'collab.v1 selected');
    return $s;
}

# sends one text frame, returns the decoded reply (or a string saying why
# there is none)
sub request {
    my ($s, $text) = @_;
    send_raw($s, f(opcode => 1, payload => $text));
    my $fr = $t->ws_read_frame($s, 10)
        or return 'no reply: ' . ($t->{ws_error} // '?');
    return "opcode $fr->{opcode}" unless $fr->{opcode} == 1;
    my $r = eval { $json->decode($fr->{payload}) };
    return $r // "not JSON: $fr->{payload}";
}

# request text, the expected reply; for errors only op, code and ref are
# compared (the message is for humans)
my @cases = (
    ['{"op":"ping","ref":1}', {op => 'pong', ref => 1}],
    ['{"op":"ping","ref":"abc-123"}', {op => 'pong', ref => 'abc-123'}],
    ['{"op":"ping"}', {op => 'pong'}],
    ['{"ref":42,"op":"ping"}', {op => 'pong', ref => 42}],
    [' { "op" : "ping" , "ref" : 7 } ', {op => 'pong', ref => 7}],
    ['{"op":"ping","ref":"\u00e9t\u00e9"}',
     {op => 'pong', ref => "\x{e9}t\x{e9}"}],
    ['not json', {op => 'error', code => 'BAD_REQUEST', ref => undef}],
    ['{"op":"ping"', {op => 'error', code => 'BAD_REQUEST', ref => undef}],
    ['', {op => 'error', code => 'BAD_REQUEST', ref => undef}],
    ['[1,2,3]', {op => 'error', code => 'BAD_REQUEST', ref => undef}],
    ['"ping"', {op => 'error', code => 'BAD_REQUEST', ref => undef}],
    ['{}', {op => 'error', code => 'BAD_REQUEST', ref => undef}],
    ['{"op":42,"ref":5}', {op => 'error', code => 'BAD_REQUEST', ref => 5}],
    ['{"op":"no-such-op","ref":"r9"}',
     {op => 'error', code => 'BAD_REQUEST', ref => 'r9'}],
    ['{"op":"ping","ref":{"a":1}}',
     {op => 'error', code => 'BAD_REQUEST', ref => undef}],
    ['{"op":"ping","ref":1.5}',
     {op => 'error', code => 'BAD_REQUEST', ref => undef}],
    ['{"op":"ping","op":"ping"}',
     {op => 'error', code => 'BAD_REQUEST', ref => undef}],
);

my $s = open_chat();

for my $c (@cases) {
    my ($text, $want) = @$c;
    my $got = request($s, $text);

    if (ref $got eq 'HASH' && $want->{op} eq 'error') {
        ok(defined $got->{message} && length $got->{message},
           "'$text': the error has a message");
        $got = { map { $_ => $got->{$_} } grep { exists $got->{$_} }
                 qw(op code ref) };
    }
    # a request without "ref": the reply may omit it or carry null
    delete $got->{ref} if ref $got eq 'HASH' && !exists $want->{ref}
                          && exists $got->{ref} && !defined $got->{ref};
    is_deeply($got, $want, "'$text' -> " . $json->encode($want))
        or diag(explain($got));
}

# the connection survived all of the errors above
is_deeply(request($s, '{"op":"ping","ref":"last"}'),
          {op => 'pong', ref => 'last'},
          'the connection is still open after every error');

# a fragmented request is one message
send_raw($s, f(opcode => 1, fin => 0, payload => '{"op":"pi')
    . f(opcode => 9, payload => 'x')
    . f(opcode => 0, payload => 'ng","ref":99}'));
my $pong = $t->ws_read_frame($s, 10);
is($pong && $pong->{opcode}, 10, 'ping frame inside a fragmented request');
my $fr = $t->ws_read_frame($s, 10);
is_deeply($fr && eval { $json->decode($fr->{payload}) },
          {op => 'pong', ref => 99}, 'a fragmented request is answered');

# pipelined requests are answered in order
send_raw($s, join '', map { f(payload => qq({"op":"ping","ref":$_})) }
                          1 .. 50);
my @refs;
for (1 .. 50) {
    my $r = $t->ws_read_frame($s, 10) or last;
    push @refs, eval { $json->decode($r->{payload})->{ref} };
}
is_deeply(\@refs, [1 .. 50], '50 pipelined pings answered in order');

# binary: close 1003, and the closing handshake completes
send_raw($s, f(opcode => 2, payload => '{"op":"ping"}'));
my $close = $t->ws_read_frame($s, 10);
is($close && $close->{opcode}, 8, 'a binary frame gets a close frame');
is($close && $close->{close_code}, 1003, 'with 1003 (unsupported data)');
send_raw($s, f(opcode => 8, payload => pack('n', 1003)));
ok($t->ws_wait_eof($s, 10), 'the server closes TCP after our close');
close $s;

# nothing answered after the server's close frame
$s = open_chat();
send_raw($s, f(opcode => 2, payload => 'bin')
    . f(opcode => 1, payload => '{"op":"ping","ref":1}'));
$close = $t->ws_read_frame($s, 10);
is($close && $close->{close_code}, 1003, '1003 again');
send_raw($s, f(opcode => 8, payload => pack('n', 1000)));
my @after;
while (my $x = $t->ws_read_frame($s, 10)) {
    push @after, $x;
}
is($t->{ws_error}, 'eof', 'then EOF');
is(scalar @after, 0, 'no reply to a request sent after the binary frame');
close $s;

# the endpoint also works without the subprotocol being offered
{
    my ($s2, $st, $h) = $t->ws_raw('/chat');
    ok(!exists $h->{'sec-websocket-protocol'}, 'no protocol when not offered');
    is_deeply(request($s2, '{"op":"ping","ref":2}'), {op => 'pong', ref => 2},
              'and ping still works');
    close $s2;
}

done_testing();
