# Messages through collab_echo: every text and binary message comes back
# with the same opcode and the same bytes, whatever its size, however it
# is fragmented, whatever else is interleaved, and however the bytes are
# cut into TCP writes.
#
# Why: the echo location runs the exact path chat traffic takes, and the
# issue requires "a 1 MiB message echoed intact across fragments".  The
# sizes are the length-encoding boundaries (7-bit, 16-bit, 64-bit forms:
# 125/126, 65535/65536); the pipelined and dribbled cases exercise the
# parser on input that stops at every byte boundary, and payloads that
# span reads (assembled in ws->msg) versus payloads parsed in place.

use strict;
use warnings;

use Test::More;
use Digest::SHA qw(sha1_hex);
use Time::HiRes qw(sleep time);
use Collab::Test;

my $t = Collab::Test->new;

$t->start_nginx(<<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;

        location /echo {
            collab_echo;
            collab_max_message_size 2m;
        }

        location /big {
            collab_echo;
            collab_max_message_size 2m;
            collab_send_queue_size 4m;
        }
    }
EOF

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

# deterministic payloads: printable ASCII for text, all byte values for
# binary
sub text_payload {
    my ($len) = @_;
    my $unit = join '', map { chr(0x21 + ($_ * 7) % 94) } 0 .. 93;
    return substr($unit x (int($len / 94) + 1), 0, $len);
}

sub binary_payload {
    my ($len) = @_;
    my $unit = join '', map { chr(($_ * 31 + 7) & 0xff) } 0 .. 255;
    return substr($unit x (int($len / 256) + 1), 0, $len);
}

sub short { length($_[0]) > 40 ? length($_[0]) . ' bytes' : "'$_[0]'" }

# --- sizes ------------------------------------------------------------------

my @sizes = (0, 1, 125, 126, 127, 65535, 65536);

{
    my $s = $t->ws_raw('/echo');

    for my $op ([1, 'text', \&text_payload], [2, 'binary', \&binary_payload])
    {
        my ($opcode, $kind, $gen) = @$op;

        for my $len (@sizes) {
            my $payload = $gen->($len);
            send_raw($s, f(opcode => $opcode, payload => $payload));
            my $e = $t->ws_read_frame($s, 20);

            ok($e, "$kind $len: echoed") or next;
            is($e->{opcode}, $opcode, "$kind $len: same opcode");
            ok($e->{fin} && !$e->{masked} && !$e->{rsv},
               "$kind $len: one final unmasked frame");
            is(length $e->{payload}, $len, "$kind $len: same length");
            ok($e->{payload} eq $payload, "$kind $len: same bytes");
        }
    }

    # multi-byte UTF-8 survives byte for byte
    my $utf8 = "na\xc3\xafve \xe2\x82\xac \xf0\x9f\x98\x80 \xe4\xb8\xad";
    send_raw($s, f(payload => $utf8));
    my $e = $t->ws_read_frame($s, 10);
    is($e && $e->{payload}, $utf8, 'multi-byte UTF-8 text echoed as is');

    close $s;
}

# --- 1 MiB in 64 KiB fragments with pings between -----------------------

subtest '1 MiB text message in 64 KiB fragments, pings interleaved' => sub {
    my $s = $t->ws_raw('/big');
    my $msg = text_payload(1024 * 1024);
    my $frag = 64 * 1024;
    my $n = length($msg) / $frag;
    my @pings;

    for my $i (0 .. $n - 1) {
        my $chunk = substr($msg, $i * $frag, $frag);
        send_raw($s, f(opcode => $i == 0 ? 1 : 0, fin => $i == $n - 1 ? 1 : 0,
                       payload => $chunk));
        if ($i < $n - 1) {
            my $p = "ping $i";
            push @pings, $p;
            send_raw($s, f(opcode => 9, payload => $p));
        }
    }

    my (@pongs, $echo);
    while (my $fr = $t->ws_read_frame($s, 30)) {
        if ($fr->{opcode} == 10) {
            push @pongs, $fr->{payload};
            next;
        }
        $echo = $fr;
        last;
    }

    is_deeply(\@pongs, \@pings,
              scalar(@pings) . ' pongs with the pings\' payloads, in order');
    ok($echo, 'the message is echoed') or return;
    is($echo->{opcode}, 1, 'as text');
    is(length $echo->{payload}, length $msg, '1 MiB long');
    is(sha1_hex($echo->{payload}), sha1_hex($msg), 'intact (SHA-1)');

    send_raw($s, f(opcode => 8, payload => pack('n', 1000)));
    my $c = $t->ws_read_frame($s, 10);
    is($c && $c->{close_code}, 1000, 'clean close afterwards');
    close $s;
};

subtest '1 MiB binary message in one frame' => sub {
    my $s = $t->ws_raw('/big');
    my $msg = binary_payload(1024 * 1024);
    send_raw($s, f(opcode => 2, payload => $msg));
    my $e = $t->ws_read_frame($s, 30);
    ok($e, 'echoed') or return;
    is($e->{opcode}, 2, 'as binary');
    is(sha1_hex($e->{payload}), sha1_hex($msg), 'intact (SHA-1)');
    close $s;
};

subtest '1 MiB message in 1000-byte fragments written at once' => sub {
    my $s = $t->ws_raw('/big');
    my $msg = binary_payload(1024 * 1024);
    my $bytes = '';
    for (my $off = 0; $off < length $msg; $off += 1000) {
        my $last = $off + 1000 >= length $msg;
        $bytes .= f(opcode => $off ? 0 : 2, fin => $last ? 1 : 0,
                    payload => substr($msg, $off, 1000));
    }
    send_raw($s, $bytes);
    my $e = $t->ws_read_frame($s, 30);
    ok($e, 'echoed') or return;
    is(sha1_hex($e->{payload}), sha1_hex($msg), 'intact (SHA-1)');
    close $s;
};

# --- many messages in one write ---------------------------------------------

subtest 'pipelined messages in one write are echoed in order' => sub {
    my $s = $t->ws_raw('/echo');
    my (@want, $bytes);
    for my $i (1 .. 200) {
        my $m = $i % 3 == 0 ? [2, binary_payload($i * 37 % 3000)]
              : [1, "message $i " . text_payload($i * 13 % 500)];
        if ($i % 10 == 0) {
            # some as fragmented messages with a ping in the middle
            my $half = int(length($m->[1]) / 2);
            $bytes .= f(opcode => $m->[0], fin => 0,
                        payload => substr($m->[1], 0, $half))
                    . f(opcode => 9, payload => "p$i")
                    . f(opcode => 0, payload => substr($m->[1], $half));
            push @want, [10, "p$i"];
        } else {
            $bytes .= f(opcode => $m->[0], payload => $m->[1]);
        }
        push @want, $m;
    }
    send_raw($s, $bytes);

    my @got;
    while (@got < @want) {
        my $e = $t->ws_read_frame($s, 20) or last;
        push @got, [$e->{opcode}, $e->{payload}];
    }
    is(scalar @got, scalar @want, scalar(@want) . ' frames back');
    my $bad = (grep { $got[$_][0] != $want[$_][0]
                      || $got[$_][1] ne $want[$_][1] } 0 .. $#got)[0];
    ok(!defined $bad, 'same opcodes and payloads, in order')
        or diag("first difference at frame $bad: got "
                . short($got[$bad][1]) . ", want " . short($want[$bad][1]));
    close $s;
};

# --- one byte per write -----------------------------------------------------

sub dribble {
    my ($s, $bytes) = @_;
    for my $b (split //, $bytes) {
        send_raw($s, $b) or return 0;
        sleep 0.002;
    }
    return 1;
}

subtest 'a frame dribbled one byte per write is echoed' => sub {
    my $s = $t->ws_raw('/echo');
    setsockopt($s, 6, 1, 1);        # IPPROTO_TCP, TCP_NODELAY
    my $m = "dribbled \xe2\x82\xac text";
    dribble($s, f(payload => $m));
    my $e = $t->ws_read_frame($s, 10);
    is($e && $e->{opcode}, 1, 'text');
    is($e && $e->{payload}, $m, 'same bytes');

    # 16-bit length form, fragmented, a ping in between, byte by byte
    my $m2 = text_payload(200);
    dribble($s, f(opcode => 1, fin => 0, payload => substr($m2, 0, 130))
        . f(opcode => 9, payload => 'dp')
        . f(opcode => 0, payload => substr($m2, 130), length_form => 64));
    my $p = $t->ws_read_frame($s, 10);
    is($p && $p->{opcode}, 10, 'pong for the ping between the fragments');
    is($p && $p->{payload}, 'dp', 'with its payload');
    $e = $t->ws_read_frame($s, 10);
    is($e && $e->{payload}, $m2, 'fragmented dribbled message echoed');

    close $s;

    # a frame bigger than one read, cut at odd offsets
    $s = $t->ws_raw('/echo');
    my $big = f(opcode => 2, payload => binary_payload(70000),
                mask_key => "k3y!");
    for (my $off = 0; $off < length $big; $off += 4093) {
        send_raw($s, substr($big, $off, 4093));
        sleep 0.001;
    }
    $e = $t->ws_read_frame($s, 20);
    ok($e && $e->{payload} eq binary_payload(70000),
       '70000 bytes written in 4093-byte pieces echoed intact');
    close $s;
};

done_testing();
