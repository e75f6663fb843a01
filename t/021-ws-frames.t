# Every way a client can break RFC 6455 framing, each driven by raw bytes
# on a plain socket after a good handshake, and the exact close code the
# server must answer with: 1002 (protocol error), 1007 (invalid UTF-8 in
# text) or 1009 (message above collab_max_message_size).  After its close
# frame the server must close the TCP connection by itself.
#
# Why: these are the close paths of the issue's "Frames" list and of the
# Autobahn|Testsuite cases 1-7 and 9.  Two of them are easy to get only
# NON-STRICT: invalid UTF-8 must be refused at the first bad byte even
# when the rest of the frame has not arrived (6.4.1-6.4.4), and an
# oversized message must be refused on its header, before any payload.
# The "fail fast" cases send a header that announces more payload than
# they send and never send the rest: a server that waits for it does not
# answer within the read timeout and the case fails.

use strict;
use warnings;

use Test::More;
use Collab::Test;

my $t = Collab::Test->new;

$t->start_nginx(<<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;

        location /echo { collab_echo; }

        location /small {
            collab_echo;
            collab_max_message_size 1k;
        }
    }
EOF

sub f { Collab::Test::ws_frame(@_) }

my $X10_BAD5 = "abcd\xffefgh";         # 10 bytes, the 5th is not UTF-8

# name, location, bytes to send (frames), frames expected before the close
# (opcode and payload), close code
my @cases = (
    # framing
    ['unmasked text frame', '/echo',
     [f(payload => 'hello', mask => 0)], [], 1002],
    ['unmasked ping', '/echo',
     [f(opcode => 9, payload => 'x', mask => 0)], [], 1002],
    ['unmasked empty close', '/echo',
     [f(opcode => 8, mask => 0)], [], 1002],
    ['RSV1 set', '/echo', [f(payload => 'hello', rsv1 => 1)], [], 1002],
    ['RSV2 set', '/echo', [f(payload => 'hello', rsv2 => 1)], [], 1002],
    ['RSV3 set', '/echo', [f(payload => 'hello', rsv3 => 1)], [], 1002],
    ['RSV1-3 set', '/echo', [f(payload => 'hello', rsv => 7)], [], 1002],
    ['RSV1 on a ping', '/echo',
     [f(opcode => 9, payload => 'p', rsv1 => 1)], [], 1002],
    ['RSV2 on a continuation', '/echo',
     [f(payload => 'ab', fin => 0), f(opcode => 0, payload => 'c', rsv2 => 1)],
     [], 1002],
    (map {
        my $op = $_;
        [sprintf('reserved opcode 0x%X', $op), '/echo',
         [f(opcode => $op, payload => 'xyz')], [], 1002],
     } 3 .. 7, 0xB .. 0xF),
    ['reserved opcode 0xB with an empty payload', '/echo',
     [f(opcode => 0xB)], [], 1002],
    ['fragmented ping', '/echo',
     [f(opcode => 9, payload => 'frag', fin => 0)], [], 1002],
    ['fragmented pong', '/echo',
     [f(opcode => 10, payload => 'frag', fin => 0)], [], 1002],
    ['fragmented close', '/echo',
     [f(opcode => 8, payload => pack('n', 1000), fin => 0)], [], 1002],
    ['ping with a 126-byte payload', '/echo',
     [f(opcode => 9, payload => 'p' x 126)], [], 1002],
    ['pong with a 126-byte payload', '/echo',
     [f(opcode => 10, payload => 'p' x 126)], [], 1002],
    ['close with a 126-byte payload', '/echo',
     [f(opcode => 8, payload => pack('n', 1000) . ('r' x 124))], [], 1002],
    ['continuation without a start', '/echo',
     [f(opcode => 0, payload => 'orphan')], [], 1002],
    ['final continuation without a start', '/echo',
     [f(opcode => 0, payload => 'orphan', fin => 1)], [], 1002],
    ['continuation after a complete message', '/echo',
     [f(payload => 'done'), f(opcode => 0, payload => 'late')],
     [[1, 'done']], 1002],
    ['new text frame inside a fragmented text message', '/echo',
     [f(payload => 'part1', fin => 0), f(payload => 'part2')], [], 1002],
    ['new binary frame inside a fragmented text message', '/echo',
     [f(payload => 'part1', fin => 0), f(opcode => 2, payload => 'b')],
     [], 1002],
    ['new text frame inside a fragmented binary message', '/echo',
     [f(opcode => 2, payload => 'b1', fin => 0),
      f(opcode => 0, payload => 'b2', fin => 0), f(payload => 'x')],
     [], 1002],
    ['new text frame after a ping inside a fragmented message', '/echo',
     [f(payload => 'part1', fin => 0), f(opcode => 9, payload => 'mid'),
      f(payload => 'part2')],
     [[10, 'mid']], 1002],
    ['64-bit length with the most significant bit set', '/echo',
     [substr(f(payload => 'x'), 0, 1) . "\xff" . pack('Q>', 2**63 + 1)
      . 'mask'], [], 1002],

    # UTF-8
    (map {
        my ($what, $bytes) = @$_;
        ["invalid UTF-8 in a single text frame: $what", '/echo',
         [f(payload => "ok $bytes ok")], [], 1007],
     } (['0xFF', "\xff"],
        ['0xC0 0xAF (overlong /)', "\xc0\xaf"],
        ['overlong 3-byte form', "\xe0\x80\xaf"],
        ['UTF-16 surrogate U+D800', "\xed\xa0\x80"],
        ['above U+10FFFF', "\xf4\x90\x80\x80"],
        ['lone continuation byte', "\x80"],
        ['0xF5 lead byte', "\xf5\x80\x80\x80"],
        ['lead byte followed by ASCII', "\xe2\x28\xa1"])),
    ['truncated UTF-8 sequence at the end of a text message', '/echo',
     [f(payload => "euro \xe2\x82")], [], 1007],
    ['invalid UTF-8 split across fragments', '/echo',
     [f(payload => "caf\xce", fin => 0), f(opcode => 0, payload => "\xff")],
     [], 1007],
    ['UTF-8 sequence split across fragments, bad second byte', '/echo',
     [f(payload => "\xf0\x9f", fin => 0),
      f(opcode => 0, payload => "\x98\x28", fin => 1)], [], 1007],
    ['UTF-8 sequence truncated by the final fragment', '/echo',
     [f(payload => "ok \xe2\x82", fin => 0), f(opcode => 0, payload => '')],
     [], 1007],
    ['invalid UTF-8 in a later fragment, a ping between', '/echo',
     [f(payload => 'valid', fin => 0), f(opcode => 9, payload => 'pi'),
      f(opcode => 0, payload => "\xed\xbf\xbf")],
     [[10, 'pi']], 1007],

    # fail fast: the frame's payload never completes
    ['fail fast: bad byte 5 of 1000 announced (6.4.3)', '/echo',
     [f(length => 1000, payload => $X10_BAD5)], [], 1007],
    ['fail fast: bad byte 5 of 1000 in a 64-bit length frame (6.4.4)',
     '/echo', [f(length => 1000, length_form => 64, payload => $X10_BAD5)],
     [], 1007],
    ['fail fast: bad byte inside a continuation (6.4.1)', '/echo',
     [f(payload => 'valid start ', fin => 0),
      f(opcode => 0, length => 1000, payload => $X10_BAD5, fin => 1)],
     [], 1007],
    ['fail fast: bad byte inside an unfinished first fragment (6.4.2)',
     '/echo', [f(length => 1000, payload => $X10_BAD5, fin => 0)], [], 1007],
    ['fail fast: sequence completed wrongly in the next fragment', '/echo',
     [f(payload => "\xce", fin => 0),
      f(opcode => 0, length => 1000, payload => "\x41rest")], [], 1007],

    # collab_max_message_size 1k
    ['1025-byte text frame above 1k', '/small',
     [f(payload => 'a' x 1025)], [], 1009],
    ['1025-byte binary frame above 1k', '/small',
     [f(opcode => 2, payload => "\0" x 1025)], [], 1009],
    ['600 + 600 bytes in two fragments above 1k', '/small',
     [f(payload => 'a' x 600, fin => 0), f(opcode => 0, payload => 'b' x 600)],
     [], 1009],
    ['1024 + 1 bytes in two fragments above 1k', '/small',
     [f(opcode => 2, payload => 'a' x 1024, fin => 0),
      f(opcode => 0, payload => 'b')], [], 1009],
    ['many small fragments adding up above 1k', '/small',
     [f(payload => 'a' x 100, fin => 0),
      (map { f(opcode => 0, payload => 'a' x 100, fin => 0) } 1 .. 9),
      f(opcode => 0, payload => 'a' x 100)], [], 1009],
    ['only the header of a 2000-byte frame (fail on the header)', '/small',
     [f(length => 2000)], [], 1009],
    ['only the header of a 2^40-byte frame', '/small',
     [f(length => 2**40)], [], 1009],
    ['only the header of a continuation pushing the message above 1k',
     '/small', [f(payload => 'a' x 1000, fin => 0),
                f(opcode => 0, length => 100)], [], 1009],
);

# read frames until a close frame: (\@frames_before, $close_frame)
sub read_until_close {
    my ($s, $timeout) = @_;
    my @before;
    while (my $f = $t->ws_read_frame($s, $timeout)) {
        return (\@before, $f) if $f->{opcode} == 8;
        push @before, $f;
    }
    return (\@before, undef);
}

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

for my $c (@cases) {
    my ($name, $path, $send, $expect, $code) = @$c;

    subtest $name => sub {
        my $s = $t->ws_raw($path);

        send_raw($s, $_) for @$send;

        my ($before, $close) = read_until_close($s, 10);

        is_deeply([map { [$_->{opcode}, $_->{payload}] } @$before], $expect,
                  'frames before the close')
            or diag(explain($before));

        ok($close, 'close frame received')
            or diag('no close frame: ' . ($t->{ws_error} // '?'));

        is($close && $close->{close_code}, $code, "close code $code");
        ok($close && $close->{fin} && !$close->{masked} && !$close->{rsv},
           'the close frame is final, unmasked, no RSV bits');
        cmp_ok(length($close ? $close->{payload} : ''), '<=', 125,
               'close payload fits a control frame');

        ok($t->ws_wait_eof($s, 10), 'then the server closes TCP');
        close $s;
    };
}

# positive controls for the limits and the codec boundaries: the cases
# above fail for the reason they name, not because nothing works
my @good = (
    ['1024-byte text frame at the 1k limit', '/small',
     [f(payload => 'a' x 1024)], [[1, 'a' x 1024]]],
    ['512 + 512 bytes in two fragments at the limit', '/small',
     [f(opcode => 2, payload => 'a' x 512, fin => 0),
      f(opcode => 0, payload => 'b' x 512)],
     [[2, ('a' x 512) . ('b' x 512)]]],
    ['two 1024-byte messages (the limit is per message)', '/small',
     [f(payload => 'a' x 1024), f(payload => 'b' x 1024)],
     [[1, 'a' x 1024], [1, 'b' x 1024]]],
    ['valid 4-byte UTF-8 split across three fragments', '/echo',
     [f(payload => "\xf0", fin => 0),
      f(opcode => 0, payload => "\x9f\x98", fin => 0),
      f(opcode => 0, payload => "\x80!")], [[1, "\xf0\x9f\x98\x80!"]]],
    ['U+10FFFF and U+FFFF are valid', '/echo',
     [f(payload => "\xf4\x8f\xbf\xbf\xef\xbf\xbf")],
     [[1, "\xf4\x8f\xbf\xbf\xef\xbf\xbf"]]],
    ['ping with 125 bytes', '/echo',
     [f(opcode => 9, payload => 'p' x 125)], [[10, 'p' x 125]]],
    ['7-byte text frame in the 64-bit length form', '/echo',
     [f(payload => 'minimal', length_form => 64)], [[1, 'minimal']]],
    ['invalid UTF-8 in a binary message is data', '/echo',
     [f(opcode => 2, payload => "\xff\xfe\xc0")], [[2, "\xff\xfe\xc0"]]],
    ['empty fragments around a message', '/echo',
     [f(payload => '', fin => 0), f(opcode => 0, payload => 'mid', fin => 0),
      f(opcode => 0, payload => '')], [[1, 'mid']]],
);

for my $c (@good) {
    my ($name, $path, $send, $expect) = @$c;

    subtest "accepted: $name" => sub {
        my $s = $t->ws_raw($path);
        send_raw($s, $_) for @$send;

        my @got;
        for (1 .. @$expect) {
            my $f = $t->ws_read_frame($s, 10) or last;
            push @got, [$f->{opcode}, $f->{payload}];
        }
        is_deeply(\@got, $expect, 'echoed / answered')
            or diag(explain(\@got));

        send_raw($s, f(opcode => 8, payload => pack('n', 1000)));
        my $close = $t->ws_read_frame($s, 10);
        is($close && $close->{close_code}, 1000,
           'still open: the close handshake completes with 1000');
        close $s;
    };
}

done_testing();
