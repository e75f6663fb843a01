package Collab::AITest;

# Helpers shared by the t/09x-ai-*.t files (the AI participant, issue 9),
# with the mock provider of Collab::MockAI and the clients of
# Collab::Chat.
#
# Exported by default (what t/090, t/091 and t/092 use):
#
#   $KEY                      a fresh random key, 'sk-mock-' and 32 hex
#                             digits, for this test file
#   write_key($t, $key)       $key (default $KEY) into <testdir>/ai.key,
#                             for collab_ai_key_file
#   ai_conf($mock, timeout => '4s', port => '' | '2' | ...,
#           extra => 'directives', endpoint => URL)
#                             the http{} block of one nginx with the
#                             assistant on $mock (or on endpoint)
#   ai_reply($c, $reply_to, $timeout)
#                             (\@ai_delta, $final) of the reply to seq
#                             $reply_to
#   texts(\@ai_delta)         the deltas' texts, concatenated
#   say_($c, $slug, $body)    the user's message; its seq
#   no_key_anywhere($t, @clients)
#                             4 tests: $KEY is neither in error.log nor
#                             in a frame the clients (opened with
#                             raw_log => 1) received, nor any part of it
#
# On request:
#
#   open_session($dbh, $title, @clients)
#                             a public session created by the first
#                             client and joined by all; ($slug, $sid)
#   first_ai($c, $wait)       the first ai event the client gets (any
#                             replyTo); undef after $wait (default 15)
#   reply_to_of($e)           the replyTo of such an event; '(none)' for
#                             undef
#   ai_events($c, $reply_to, $timeout)
#                             every event of the assistant about seq
#                             $reply_to (ai_progress, ai_delta), in
#                             arrival order, up to the one that ends it
#                             (the message of kind ai, or an ai_error)
#   ops(@events)              their ops in one string, an ai_error as
#                             "ai_error:CODE"

use strict;
use warnings;

use Exporter qw(import);
use Test::More;
use Time::HiRes qw(time);

our @EXPORT = qw($KEY write_key ai_conf ai_reply texts say_
                 no_key_anywhere);
our @EXPORT_OK = qw(open_session first_ai reply_to_of ai_events ops);

our $KEY = 'sk-mock-'
    . join('', map { sprintf '%02x', int rand 256 } 1 .. 16);


sub write_key {
    my ($t, $key) = @_;
    $key //= $KEY;
    open my $fh, '>', $t->dir . '/ai.key' or die $!;
    print $fh "$key\n";
    close $fh;
}


# the http{} block of an nginx with the assistant on $mock: timeout =>
# collab_ai_timeout, port => the %%PORTn%% suffix ('' for %%PORT%%), and
# optional extra => http-level lines, chat => lines in location /chat,
# locations => more location blocks, endpoint => another provider URL
sub ai_conf {
    my ($mock, %o) = @_;
    my $extra = $o{extra} // '';
    my $chat = $o{chat} // '';
    my $locations = $o{locations} // '';
    my $port = $o{port} // '';
    my $endpoint = $o{endpoint} // $mock->endpoint;
    return <<"CONF";
    collab_postgres "%%PG_DSN%%" pool=2 timeout=10s;
    collab_batch_window 2ms;
    collab_ai_endpoint   $endpoint;
    collab_ai_key_file   %%TESTDIR%%/ai.key;
    collab_ai_model      mock/model-1;
    collab_ai_timeout    $o{timeout};
    collab_ai_max_tokens 300;
    collab_ai_context    5;
    collab_ai_image_model mock/image-1;
$extra
    server {
        listen 127.0.0.1:%%PORT$port%%;

        location /chat {
            collab_websocket;
            collab_user \$http_x_user_id;
            collab_user_name \$http_x_user_name;
$chat
        }
$locations
    }
CONF
}


# a take() filter: the events about the reply to $reply_to, the final
# "message" of kind ai and the ops matching $ops
sub about {
    my ($reply_to, $ops) = @_;
    return sub {
        my $r = $_->{op} eq 'message'
            ? ($_->{kind} // '') eq 'ai' && ref $_->{metadata} eq 'HASH'
              ? $_->{metadata}{replyTo} : undef
            : $_->{op} =~ $ops ? $_->{replyTo}
            : undef;
        defined $r && $r == $reply_to;
    };
}


# the ai_delta events of the reply to $reply_to, in arrival order, and the
# event that ended it: the "message" of kind ai, or an ai_error
sub ai_reply {
    my ($c, $reply_to, $timeout) = @_;
    my (@d, $final);
    my $end = time + ($timeout // 15);
    while (time < $end) {
        my $e = $c->take(about($reply_to, qr/^ai_(?:delta|error)$/),
                         $end - time) or last;
        if ($e->{op} eq 'ai_delta') {
            push @d, $e;
            next;
        }
        $final = $e;
        last;
    }
    return (\@d, $final // { op => '(nothing)' });
}


sub texts { join '', map { $_->{text} } @{ $_[0] } }


# the user's message; returns its seq (or dies: nothing else makes sense)
sub say_ {
    my ($c, $slug, $body) = @_;
    my $r = $c->req(op => 'send', session => $slug, body => $body,
                    clientMsgId => 'm' . int(rand 1e9));
    $r->{op} eq 'ack' or die "send '$body': " . explain($r);
    return $r->{seq};
}


sub no_key_anywhere {
    my ($t, @clients) = @_;
    my $log = $t->error_log;
    ok(index($log, $KEY) < 0, 'the key is not in error.log');
    my $frames = join '', map { $_->{raw_log} // '' } @clients;
    ok(length $frames, 'frames were received');
    ok(index($frames, $KEY) < 0, 'nor in any frame a client received');
    my $k = substr $KEY, 8, 12;
    ok(index($log, $k) < 0 && index($frames, $k) < 0,
       'not even a part of it');
}


sub open_session {
    my ($dbh, $title, @c) = @_;
    my $r = $c[0]->req(op => 'create', title => $title, isPublic => \1);
    my $slug = $r->{session}{id} // die explain($r);
    $_->req(op => 'join', session => $slug)->{op} eq 'joined'
        or die 'join' for @c;
    my $sid = $dbh->selectrow_array(
        'SELECT id FROM chat_sessions WHERE slug = ?', undef, $slug);
    return ($slug, $sid);
}


sub first_ai {
    my ($c, $wait) = @_;
    return $c->take(sub { $_->{op} =~ /^ai_/
                          || $_->{op} eq 'message' && $_->{kind} eq 'ai' },
                    $wait // 15);
}


sub reply_to_of {
    my ($e) = @_;
    return '(none)' unless $e;
    return $e->{op} eq 'message' ? $e->{metadata}{replyTo} : $e->{replyTo};
}


# every event about the reply to $reply_to, ai_progress included, up to the
# one that ends it (the ai message or an ai_error)
sub ai_events {
    my ($c, $reply_to, $timeout) = @_;
    my @e;
    my $end = time + ($timeout // 15);
    while (time < $end) {
        my $e = $c->take(about($reply_to, qr/^ai_/), $end - time) or last;
        push @e, $e;
        last if $e->{op} ne 'ai_progress' && $e->{op} ne 'ai_delta';
    }
    return @e;
}


sub ops { join ' ', map { $_->{op} eq 'ai_error' ? "ai_error:$_->{code}"
                          : $_->{op} } @_ }

1;
