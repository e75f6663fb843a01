package Collab::MockAI;

# A mock OpenAI-compatible provider for the t/09x-ai-*.t tests.
#
# It stands for a remote service (the AI provider), not for PostgreSQL or
# Redis, so a mock is the right thing here.  Collab::MockAI->start(dir =>
# $t->dir) runs it in a child process (perl exec'ed afresh, so it shares
# nothing with the test) on a free loopback port; stop() ends it, and an
# END block stops whatever a failed test left running.
#
# POST /v1/chat/completions answers by a marker in the last message's
# content (the first that matches wins):
#
#   [401] [429] [500] [503]  that status, a JSON error body
#   [hang]        headers never sent, the request held open
#   [garbage]     a 200 stream whose data lines are not JSON
#   [length]      three chunks of text, then finish_reason "length", no
#                 [DONE]
#   [cut]         three chunks of text, then the connection is closed in
#                 the middle of the chunked body (no [DONE], no last chunk)
#   [nodone]      three chunks, then the body ends properly without [DONE]
#   [miderror]    three chunks, then an error event as OpenRouter sends one
#                 when the model fails after the 200: data: {"error":
#                 {"code": 502, "message": ...}}, then [DONE]
#   [finerror]    three chunks, then finish_reason "error" and [DONE]
#   [empty]       role-only deltas and [DONE], no text at all
#   [long]        60 chunks 100 ms apart (6 s: for cancel)
#   [fast]        10 chunks with no delay
#   anything else 10 chunks 100 ms apart, then finish_reason "stop" and
#                 [DONE]
#
# POST /v1/images/generations (text-to-image sessions) answers one JSON
# object after 300 ms, by a marker in the prompt:
#
#   [401] [429] [500] [503]  that status, a JSON error body
#   [hang]        headers never sent
#   [garbage]     a 200 whose body is not JSON
#   [huge]        a 200 of 6 MiB (a b64_json that never ends)
#   [noimage]     {"data": [{}]}
#   [badb64]      a b64_json with characters base64 does not have
#   [url]         {"data": [{"url": image_url()}]}
#   anything else {"data": [{"b64_json": image_b64(), "revised_prompt":
#                 "revised: <prompt>"}]}
#
# POST /v1/images/edits (image-to-image sessions) takes OpenAI's
# multipart/form-data: it answers 400 unless the form has "model",
# "prompt" and a non-empty "image" file part, and otherwise answers like
# /images/generations (the same markers in the prompt, the same image).
# Its record's body is {model, prompt, n, response_format, image:
# {filename, content_type, size, b64 (the bytes that arrived, base64)}}.
#
# The streamed text is reply_text($n): chunk i is chunk_text(i).  The
# stream is cut awkwardly on purpose: a comment first (as OpenRouter
# sends), CRLF on some events, an event split across two HTTP chunks.
#
# Every request is recorded as one JSON line in <dir>/mock-ai.jsonl:
# {method, path, authorization, content_type, accept, body (decoded JSON
# or the raw text)}; requests() returns them.

use strict;
use warnings;

use Carp qw(croak);
use File::Basename qw(dirname);
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);

my @RUNNING;

sub _free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1)
        or croak "no free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# the text of chunk $i: ASCII, a quote and a backslash (JSON escapes), a
# two-byte and a four-byte UTF-8 character
sub chunk_text {
    my ($i) = @_;
    my @extra = ('', ' "q"', " caf\x{e9}", ' a\\b', " \x{1F600}");
    return "w$i" . $extra[$i % @extra] . ' ';
}

sub reply_text {
    my ($n) = @_;
    return join '', map { chunk_text($_) } 0 .. $n - 1;
}

# the image the images endpoint returns: a 1x1 PNG, base64
sub image_b64 {
    return 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8'
         . '/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg==';
}

sub image_url { 'https://images.example.test/generated/1.png' }

sub start {
    my ($class, %o) = @_;
    my $dir = $o{dir} or croak "dir";
    my $port = $o{port} // _free_port();
    my $log = "$dir/mock-ai.jsonl";
    my $out = "$dir/mock-ai.log";

    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', $out;
        open STDERR, '>>', $out;
        my $lib = dirname(dirname(__FILE__));
        { exec $^X, "-I$lib", '-MCollab::MockAI', '-e',
               'Collab::MockAI::serve(@ARGV)', $port, $log; }
        POSIX::_exit(127);
    }

    my $self = bless { pid => $pid, port => $port, log => $log,
                       out => $out }, $class;
    push @RUNNING, $self;

    my $end = time + 20;
    while (time < $end) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Proto => 'tcp');
        if ($s) {
            close $s;
            return $self;
        }
        last if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }

    my $why = do { local (@ARGV, $/) = $out; <> } // '';
    $self->stop;
    croak "mock AI server did not start on port $port:\n$why";
}

sub port { $_[0]{port} }

# the base URL for collab_ai_endpoint
sub endpoint { 'http://127.0.0.1:' . $_[0]{port} . '/v1' }

sub requests {
    my ($self) = @_;
    require Mojo::JSON;
    open my $fh, '<', $self->{log} or return ();
    my @r;
    while (my $line = <$fh>) {
        chomp $line;
        push @r, Mojo::JSON::decode_json($line);
    }
    return @r;
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'TERM', $pid;
    my $end = time + 5;
    while (time < $end) {
        return if waitpid($pid, WNOHANG) == $pid;
        sleep 0.02;
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
}

END {
    local $?;
    $_->stop for @RUNNING;
}


# --- the server (in the child) ------------------------------------------------

sub serve {
    my ($port, $log) = @_;

    require Mojolicious::Lite;
    require Mojo::IOLoop;
    require Mojo::JSON;
    require Mojo::Server::Daemon;

    $SIG{TERM} = $SIG{INT} = 'DEFAULT';

    open my $fh, '>>', $log or die "$log: $!";
    $fh->autoflush(1);

    my $app = Mojolicious->new;
    $app->log->level('fatal');
    $app->secrets(['mock']);

    $app->routes->any('/*whatever' => { whatever => '' } => sub {
        my ($c) = @_;

        my $path = $c->req->url->path->to_string;

        if ($c->req->method eq 'POST' && $path eq '/v1/images/edits') {
            return _edit($c, $fh);
        }

        my $raw = $c->req->body;
        my $json = eval { Mojo::JSON::decode_json($raw) };
        print $fh Mojo::JSON::encode_json({
            method => $c->req->method,
            path => $c->req->url->path->to_string,
            authorization => $c->req->headers->authorization,
            content_type => $c->req->headers->content_type,
            accept => $c->req->headers->accept,
            body => $json // $raw,
        }), "\n";

        if ($c->req->method eq 'POST'
            && $c->req->url->path->to_string eq '/v1/images/generations')
        {
            my $prompt = ref $json eq 'HASH' ? $json->{prompt} // '' : '';
            return _image($c, $prompt);
        }

        if ($c->req->method ne 'POST'
            || $c->req->url->path->to_string ne '/v1/chat/completions')
        {
            return $c->render(status => 404, json => { error => 'no' });
        }

        my $last = '';
        if (ref $json eq 'HASH' && ref $json->{messages} eq 'ARRAY'
            && @{ $json->{messages} })
        {
            $last = $json->{messages}[-1]{content} // '';
        }

        return _answer($c, $last);
    });

    my $daemon = Mojo::Server::Daemon->new(
        app => $app, listen => ["http://127.0.0.1:$port"], silent => 1,
        inactivity_timeout => 0,
    );
    $daemon->run;
    POSIX::_exit(0);
}

sub _edit {
    my ($c, $fh) = @_;

    require Mojo::Util;

    my $req = $c->req;
    my $up = $req->upload('image');
    my %form = map { $_ => $req->body_params->param($_) }
               qw(model prompt n response_format);
    my $bytes = $up ? $up->asset->slurp : undef;

    print $fh Mojo::JSON::encode_json({
        method => $req->method,
        path => $req->url->path->to_string,
        authorization => $req->headers->authorization,
        content_type => $req->headers->content_type,
        accept => $req->headers->accept,
        body => {
            %form,
            image => $up ? {
                filename => $up->filename,
                content_type => $up->headers->content_type,
                size => length $bytes,
                b64 => Mojo::Util::b64_encode($bytes, ''),
            } : undef,
        },
    }), "\n";

    if (($req->headers->content_type // '') !~ m{^multipart/form-data}
        || !length($form{model} // '') || !length($form{prompt} // '')
        || !$up || !length $bytes)
    {
        return $c->render(status => 400, json => { error => {
            code => 'invalid_request',
            message => 'model, prompt and image are required' } });
    }

    return _image($c, $form{prompt});
}

sub _image {
    my ($c, $prompt) = @_;

    $c->inactivity_timeout(0);
    $c->render_later;

    return if $prompt =~ /\[hang\]/;

    Mojo::IOLoop->timer(0.3 => sub {
        if ($prompt =~ /\[(401|429|500|503)\]/) {
            return $c->render(status => $1, json => {
                error => { code => $1, message => "mock provider says $1" } });
        }
        if ($prompt =~ /\[garbage\]/) {
            return $c->render(status => 200, text => 'this is not JSON');
        }
        if ($prompt =~ /\[huge\]/) {
            return $c->render(status => 200, format => 'json',
                data => '{"data":[{"b64_json":"' . ('A' x (6 << 20)));
        }
        if ($prompt =~ /\[noimage\]/) {
            return $c->render(json => { created => 1, data => [{}] });
        }
        if ($prompt =~ /\[badb64\]/) {
            return $c->render(json => { created => 1,
                data => [{ b64_json => 'iVBOR"><script>' }] });
        }
        if ($prompt =~ /\[url\]/) {
            return $c->render(json => { created => 1,
                data => [{ url => image_url() }] });
        }
        return $c->render(json => { created => 1, data => [{
            b64_json => image_b64(), revised_prompt => "revised: $prompt" }] });
    });
    return;
}

sub _sse {
    my ($obj) = @_;
    return 'data: ' . Mojo::JSON::encode_json($obj) . "\n\n";
}

sub _delta {
    my ($text, $finish) = @_;
    return _sse({
        id => 'gen-mock', object => 'chat.completion.chunk',
        model => 'mock/model-1',
        choices => [{ index => 0,
                      delta => defined $text ? { content => $text } : {},
                      finish_reason => $finish }],
    });
}

sub _answer {
    my ($c, $last) = @_;

    $c->inactivity_timeout(0);

    if ($last =~ /\[(401|429|500|503)\]/) {
        return $c->render(status => $1, json => {
            error => { code => $1, message => "mock provider says $1" } });
    }

    if ($last =~ /\[hang\]/) {
        $c->render_later;
        return;
    }

    my ($n, $delay, $end) = (10, 0.1, 'done');
    if ($last =~ /\[garbage\]/) {
        $end = 'garbage';
    } elsif ($last =~ /\[length\]/) {
        ($n, $end) = (3, 'length');
    } elsif ($last =~ /\[cut\]/) {
        ($n, $end) = (3, 'cut');
    } elsif ($last =~ /\[nodone\]/) {
        ($n, $end) = (3, 'nodone');
    } elsif ($last =~ /\[miderror\]/) {
        ($n, $end) = (3, 'miderror');
    } elsif ($last =~ /\[finerror\]/) {
        ($n, $end) = (3, 'finerror');
    } elsif ($last =~ /\[empty\]/) {
        ($n, $end) = (0, 'done');
    } elsif ($last =~ /\[long\]/) {
        $n = 60;
    } elsif ($last =~ /\[fast\]/) {
        $delay = 0;
    }

    $c->res->headers->content_type('text/event-stream');
    $c->res->headers->cache_control('no-cache');

    my $role = _delta(undef);
    $role =~ s/"delta":\{\}/"delta":{"role":"assistant"}/;
    my @parts = (": OPENROUTER PROCESSING\n\n", $role);

    if ($end eq 'garbage') {
        push @parts, _delta(chunk_text(0)),
                     "data: this is not JSON at all\n\n",
                     _delta(chunk_text(1)), "data: [DONE]\n\n";
        $n = 0;
    }

    my $tx = $c->tx;
    my $gone = 0;
    $tx->on(finish => sub { $gone = 1 });

    my $i = 0;
    my $step;
    $step = sub {
        return if $gone;

        if (@parts) {
            $c->write_chunk(shift @parts, $step);
            return;
        }

        if ($i < $n) {
            my $ev = _delta(chunk_text($i));
            $ev =~ s/\n\n$/\r\n\r\n/ if $i % 3 == 1;
            $i++;
            my $write = sub {
                return if $gone;
                if ($i == 2) {
                    # one event in two HTTP chunks
                    my $half = int(length($ev) / 2);
                    $c->write_chunk(substr($ev, 0, $half), sub {
                        $c->write_chunk(substr($ev, $half), $step);
                    });
                } else {
                    $c->write_chunk($ev, $step);
                }
            };
            if ($delay) {
                Mojo::IOLoop->timer($delay => $write);
            } else {
                $write->();
            }
            return;
        }

        if ($end eq 'done') {
            $c->write_chunk(_delta(undef, 'stop') . "data: [DONE]\n\n",
                            sub { $c->write_chunk('') });
        } elsif ($end eq 'length') {
            $c->write_chunk(_delta(undef, 'length'),
                            sub { $c->write_chunk('') });
        } elsif ($end eq 'nodone') {
            $c->write_chunk('');
        } elsif ($end eq 'miderror') {
            $c->write_chunk(_sse({ error => {
                                code => 502,
                                message => 'mock: the model went away' } })
                            . "data: [DONE]\n\n",
                            sub { $c->write_chunk('') });
        } elsif ($end eq 'finerror') {
            $c->write_chunk(_delta(undef, 'error') . "data: [DONE]\n\n",
                            sub { $c->write_chunk('') });
        } elsif ($end eq 'cut') {
            my $id = $tx->connection;
            Mojo::IOLoop->next_tick(sub { Mojo::IOLoop->remove($id) })
                if $id;
        } elsif ($end eq 'garbage') {
            $c->write_chunk('');
        }
    };

    $step->();
    return;
}

1;
