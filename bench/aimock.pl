#!/usr/bin/perl
#
# bench/aimock.pl: the mock AI provider of bench/ai.sh.
#
#   perl bench/aimock.pl PORT CHUNKS INTERVAL_MS
#
# An OpenAI-compatible streaming endpoint on 127.0.0.1:PORT: every POST
# to /v1/chat/completions is answered with a 200 text/event-stream of
# CHUNKS content deltas INTERVAL_MS apart, then finish_reason "stop" and
# [DONE].  Any number of requests are streamed at once (one Mojo event
# loop, a timer per stream).  It stands for a remote service, so a mock
# is fine (STYLE.md, item 10); t/lib/Collab/MockAI.pm is the tests' own,
# with fault modes, and streams 10 chunks 100 ms apart only.
#
# Prints "listening PORT" once it accepts connections, and on SIGTERM or
# SIGINT a line "requests N completed N max_streams N" before it exits.

use strict;
use warnings;

use Mojo::Base -strict;
use Mojo::IOLoop;
use Mojo::JSON qw(encode_json);
use Mojo::Server::Daemon;
use Mojolicious;

my ($port, $chunks, $interval) = @ARGV;
die "usage: aimock.pl PORT CHUNKS INTERVAL_MS\n"
    unless defined $interval && $port =~ /^\d+$/;

$| = 1;

my ($requests, $completed, $streams, $max_streams) = (0, 0, 0, 0);

sub sse {
    my ($delta, $finish) = @_;
    return 'data: ' . encode_json({
        id => 'gen-bench', object => 'chat.completion.chunk',
        model => 'bench/mock',
        choices => [{ index => 0, delta => $delta,
                      finish_reason => $finish }],
    }) . "\n\n";
}

my $app = Mojolicious->new;
$app->log->level('fatal');
$app->secrets(['bench']);

$app->routes->post('/v1/chat/completions' => sub {
    my ($c) = @_;
    my ($i, $gone, $step) = (0, 0);

    $requests++;
    $streams++;
    $max_streams = $streams if $streams > $max_streams;

    $c->inactivity_timeout(0);
    $c->tx->on(finish => sub {
        $streams-- unless $gone;
        $gone = 1;
        undef $step;            # it refers to itself
    });

    $c->res->headers->content_type('text/event-stream');
    $c->res->headers->cache_control('no-cache');

    # each write waits for the previous one to be written, as
    # t/lib/Collab/MockAI.pm does
    $step = sub {
        return if $gone;
        if ($i < $chunks) {
            my $text = "w$i ";
            $i++;
            Mojo::IOLoop->timer($interval / 1000 => sub {
                $c->write_chunk(sse({ content => $text }, undef), $step)
                    unless $gone;
            });
            return;
        }
        $c->write_chunk(sse({}, 'stop') . "data: [DONE]\n\n", sub {
            $completed++;
            $c->write_chunk('');
        });
    };

    $c->write_chunk(sse({ role => 'assistant' }, undef), $step);
});

$app->routes->any('/*whatever' => { whatever => '' } => sub {
    $_[0]->render(status => 404, json => { error => 'not found' });
});

my $daemon = Mojo::Server::Daemon->new(
    app => $app, listen => ["http://127.0.0.1:$port"], silent => 1,
    inactivity_timeout => 0, max_clients => 10000,
);

my $stop = sub {
    print "requests $requests completed $completed max_streams "
        . "$max_streams\n";
    exit 0;
};
$SIG{TERM} = $SIG{INT} = $stop;

# wake up often enough that the signal handler runs soon (safe signals)
Mojo::IOLoop->recurring(0.1 => sub { });

$daemon->start;
print "listening $port\n";
Mojo::IOLoop->start;
