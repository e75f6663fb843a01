#!/usr/bin/perl
#
# bench/aidrive.pl: the AI load of bench/ai.sh.
#
#   perl bench/aidrive.pl URL STREAMS [SPREAD]
#
# Opens STREAMS collab.v1 connections to URL (ws://H:P/ws; user
# "aidrive-<pid>-<i>" as ?user=), each creates its own public session,
# joins it and asks "@ai ..." there; whenever the reply's final message (kind
# "ai") or an ai_error arrives it asks again at once (after an error,
# 100 ms later), so about STREAMS replies are being streamed all the
# time.  The first questions are spread evenly over SPREAD seconds (0:
# all at once), so that replies of equal length keep starting and ending
# at different times, as independent users' would; with 0 they come in
# waves.  Prints "streaming" once every session has its first question
# out.
#
# SIGUSR1 prints a mark, the counters since the start:
#
#   mark T deltas D replies R errors E questions Q samples S
#        inflight_sum I inflight_min M
#
# T the monotonic time, D ai_delta events received, R final ai messages,
# E ai_error events (their codes go to stderr), Q questions sent; every
# 50 ms the number of replies in flight (question sent, no final yet) is
# sampled: S samples, I their sum, M the smallest since the last mark.
# SIGTERM exits.  Exit status 1 if a connection fails or closes.

use strict;
use warnings;

use Mojo::Base -strict;
use Mojo::IOLoop;
use Mojo::JSON qw(decode_json encode_json);
use Mojo::UserAgent;
use POSIX ();
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC);

my ($url, $n, $spread) = @ARGV;
die "usage: aidrive.pl URL STREAMS [SPREAD]\n"
    unless defined $n && $n =~ /^\d+$/;
$spread //= 0;

$| = 1;

my $ua = Mojo::UserAgent->new(inactivity_timeout => 0,
                              connect_timeout => 30, request_timeout => 0);
my %c = (deltas => 0, replies => 0, errors => 0, questions => 0,
         samples => 0, inflight_sum => 0);
my ($ready, $inflight, $min) = (0, 0, undef);

sub ask {
    my ($s) = @_;
    return unless $s->{tx} && !$s->{waiting};
    $s->{waiting} = 1;
    $inflight++;
    $c{questions}++;
    $s->{tx}->send(encode_json({
        op => 'send', session => $s->{slug}, clientMsgId => "q$c{questions}",
        body => "\@ai question $c{questions}: what is next?" }));
}

sub answered {
    my ($s) = @_;
    return unless $s->{waiting};
    $s->{waiting} = 0;
    $inflight--;
}

for my $i (0 .. $n - 1) {
    my $s = {};
    $ua->websocket("$url?user=aidrive-$$-$i" => ['collab.v1'] => sub {
        my ($ua, $tx) = @_;
        die "aidrive: connection $i: handshake failed\n"
            unless $tx->is_websocket;
        $s->{tx} = $tx;
        $tx->max_websocket_size(1 << 20);
        $tx->on(finish => sub {
            my (undef, $code) = @_;
            print STDERR "aidrive: connection $i closed ($code)\n";
            exit 1;
        });
        $tx->on(message => sub {
            my ($tx, $m) = @_;
            # the counted events by their op first; decode the rest
            if (index($m, '"op":"ai_delta"') >= 0) {
                $c{deltas}++;
                return;
            }
            my $j = decode_json($m);
            my $op = $j->{op} // '';
            if ($op eq 'created') {
                $s->{slug} = $j->{session}{id};
                $tx->send(encode_json({ op => 'join', ref => "j$i",
                                        session => $s->{slug} }));
            } elsif ($op eq 'joined') {
                Mojo::IOLoop->timer($spread * $i / $n => sub {
                    ask($s);
                    print "streaming\n" if ++$ready == $n;
                });
            } elsif ($op eq 'message' && ($j->{kind} // '') eq 'ai') {
                $c{replies}++;
                answered($s);
                ask($s);
            } elsif ($op eq 'ai_error') {
                $c{errors}++;
                print STDERR "aidrive: ai_error $j->{code}\n";
                answered($s);
                Mojo::IOLoop->timer(0.1 => sub { ask($s) });
            } elsif ($op eq 'error') {
                print STDERR "aidrive: error reply: $m\n";
            }
        });
        $tx->send(encode_json({ op => 'create', ref => "c$i",
                                title => "ai bench $i", isPublic => \1 }));
    });
}

Mojo::IOLoop->recurring(0.05 => sub {
    return unless $ready == $n;
    $c{samples}++;
    $c{inflight_sum} += $inflight;
    $min = $inflight if !defined $min || $inflight < $min;
});

$SIG{USR1} = sub {
    printf "mark %.3f deltas %d replies %d errors %d questions %d "
         . "samples %d inflight_sum %d inflight_min %d\n",
        clock_gettime(CLOCK_MONOTONIC), @c{qw(deltas replies errors
        questions samples inflight_sum)}, $min // -1;
    $min = undef;
};
# no global destruction: the connections' finish events are not errors here
$SIG{TERM} = $SIG{INT} = sub { POSIX::_exit(0) };

Mojo::IOLoop->start;
