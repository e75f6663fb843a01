package Collab::Chat;

# A collab.v1 client on the harness's raw WebSocket, for the chat,
# presence, Redis relay and access tests (t/03x, t/04x, t/05x, t/06x).
#
# Frames from the server are parsed as they arrive into an inbox of
# decoded JSON messages; take() removes the first one a predicate accepts,
# waiting for more if needed, so replies and events may arrive in any
# interleaving without being lost.  Pings are answered, a close frame's
# code is kept in {close_code}, fragments are joined.  Tests may read and
# empty $c->{inbox} directly, and read {eof}, {close_code}, {masked}.
#
# Options of open() and open_on_worker() where the tests differ:
#
#   identity => 'headers'  (default) the user in X-User-Id, the name in
#                          X-User-Name (collab_user $http_x_user_id)
#   identity => 'query'    both in the query string: /chat?user=U&name=N
#                          (collab_user $arg_user; collab_user_name
#                          $arg_name)
#   nontext => 'keep'      (default) a complete non-text message becomes
#                          { op => "(opcode N)" } in the inbox, so a test
#                          notices a frame it did not expect
#   nontext => 'drop'      such messages are dropped
#   raw_log => 1           the payload of every frame received (pings,
#                          closes and fragments too) is appended, as it
#                          came, to the string $c->{raw_log}, for a test
#                          that must show something never reached a
#                          client (the t/09x-ai-*.t key check); off by
#                          default, {raw_log} then stays undef
#
# Plain functions (not methods): pump(), settle(), is_presence(), items().

use strict;
use warnings;

use Carp qw(croak);
use Digest::SHA qw(sha1_base64);
use IO::Select;
use MIME::Base64 qw(encode_base64);
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(time);

use Collab::Test;

my $NREF = 0;


# Collab::Chat->open($t, user => 'u1', name => 'Ann', port => ...,
#                    path => '/chat', identity => ..., nontext => ...,
#                    raw_log => 1)
sub open {
    my ($class, $t, %o) = @_;
    my $path = $o{path} // '/chat';
    my %h = ('Sec-WebSocket-Protocol' => 'collab.v1');
    if (($o{identity} // 'headers') eq 'query') {
        $path .= '?user=' . $o{user};
        $path .= '&name=' . $o{name} if defined $o{name};
    } else {
        $h{'X-User-Id'} = $o{user} if defined $o{user};
        $h{'X-User-Name'} = $o{name} if defined $o{name};
    }
    $h{-port} = $o{port} if defined $o{port};
    my $s = $t->ws_raw($path, %h);
    return $class->_new($t, $s, %o, port => $o{port} // $t->port);
}


# Collab::Chat->open_on_worker($t, port => ..., user => ..., path => '/chat',
# nontext => ...): the client, with {pid} = the worker that serves its
# connection (a GET /pid on the keep-alive connection before the upgrade
# tells which one; the user goes in X-User-Id); raw_log => 1 as for open()
sub open_on_worker {
    my ($class, $t, %o) = @_;
    my $port = $o{port};
    my $s = $t->_connect($port);
    local $SIG{PIPE} = 'IGNORE';

    print $s "GET /pid HTTP/1.1\r\nHost: 127.0.0.1:$port\r\n\r\n";
    my ($status, $h) = Collab::Test::_read_head($s, time + 10);
    croak "GET /pid: no answer" unless defined $status && $status == 200;
    my $pid = Collab::Test::_take($s, $h->{'content-length'}, time + 10);
    croak "GET /pid: no body" unless defined $pid && $pid =~ /^\d+$/;

    my $key = encode_base64(join('', map { chr int rand 256 } 1 .. 16), '');
    print $s "GET " . ($o{path} // '/chat') . " HTTP/1.1\r\n"
        . "Host: 127.0.0.1:$port\r\n"
        . "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        . "Sec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n"
        . "Sec-WebSocket-Protocol: collab.v1\r\n"
        . "X-User-Id: $o{user}\r\n\r\n";
    ($status, $h) = Collab::Test::_read_head($s, time + 10);
    croak "upgrade: status " . ($status // 'none') unless ($status // 0) == 101;
    my $want = sha1_base64($key . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
        . '=';
    croak "upgrade: bad Sec-WebSocket-Accept"
        unless ($h->{'sec-websocket-accept'} // '') eq $want;

    return $class->_new($t, $s, %o, pid => $pid);
}


sub _new {
    my ($class, $t, $s, %o) = @_;
    my $nontext = $o{nontext} // 'keep';
    croak "nontext: '$nontext'" unless $nontext =~ /^(?:keep|drop)$/;
    my $self = bless { t => $t, s => $s, inbox => [], user => $o{user},
                       port => $o{port}, pid => $o{pid},
                       nontext => $nontext, frag => undef,
                       raw_log => $o{raw_log} ? '' : undef }, $class;
    $self->_parse;
    return $self;
}


sub user { $_[0]{user} }
sub pid { $_[0]{pid} }


sub close {
    my ($self) = @_;
    CORE::close($self->{s}) if $self->{s} && !$self->{closed}++;
    $self->{eof} = 1;
}


# a close frame with the code, then the socket is shut
sub ws_close {
    my ($self, $code) = @_;
    $self->{t}->ws_send($self->{s}, opcode => 8,
                        payload => pack('n', $code // 1000));
    $self->close;
}


sub send_text {
    my ($self, $text, %frame) = @_;
    return $self->{t}->ws_send($self->{s}, opcode => 1, payload => $text,
                               %frame);
}


sub send {
    my ($self, $req) = @_;
    return $self->send_text(encode_json($req));
}


# parses every complete frame in the socket's buffer into the inbox
sub _parse {
    my ($self) = @_;
    my $s = $self->{s};
    my $buf = \${*$s}{collab_buf};
    while (1) {
        my $have = length $$buf;
        last if $have < 2;
        my ($b0, $b1) = unpack 'CC', $$buf;
        my $len = $b1 & 0x7f;
        my $off = 2;
        if ($len == 126) {
            last if $have < 4;
            $len = unpack 'n', substr($$buf, 2, 2);
            $off = 4;
        } elsif ($len == 127) {
            last if $have < 10;
            $len = unpack 'Q>', substr($$buf, 2, 8);
            $off = 10;
        }
        $self->{masked}++ if $b1 & 0x80;       # a server must not mask
        $off += 4 if $b1 & 0x80;
        last if $have < $off + $len;
        my $payload = substr($$buf, $off, $len);
        $self->{raw_log} .= $payload if defined $self->{raw_log};
        substr($$buf, 0, $off + $len, '');

        my ($fin, $op) = ($b0 & 0x80, $b0 & 0x0f);
        if ($op == 9) {
            $self->{t}->ws_send($s, opcode => 10, payload => $payload);
            next;
        }
        next if $op == 10;
        if ($op == 8) {
            $self->{close_code} = length $payload >= 2
                ? unpack('n', $payload) : 0;
            next;
        }
        if ($op == 0) {
            $self->{frag} .= $payload;
            next unless $fin;
            $payload = delete $self->{frag};
            $op = 1;
        } elsif (!$fin) {
            $self->{frag} = $payload;
            next;
        }
        if ($op != 1) {
            push @{ $self->{inbox} }, { op => "(opcode $op)" }
                if $self->{nontext} eq 'keep';
            next;
        }
        my $msg = eval { decode_json($payload) }
            // { op => '(not JSON)', raw => $payload };
        $msg->{_raw} = $payload if $self->{keep_raw};
        push @{ $self->{inbox} }, $msg;
    }
}


# reads what the socket has (it was reported readable); false on EOF
sub _read {
    my ($self) = @_;
    my $n = sysread($self->{s}, my $chunk, 1 << 18);
    if (!defined $n) {
        return 1 if $!{EINTR} || $!{EAGAIN};
        $self->{eof} = 1;
        return 0;
    }
    if ($n == 0) {
        $self->{eof} = 1;
        return 0;
    }
    ${*{ $self->{s} }}{collab_buf} .= $chunk;
    $self->_parse;
    return 1;
}


# Collab::Chat::pump($timeout, @clients): waits up to $timeout for any of
# them to be readable and reads all that are; returns how many were (when
# every one is at EOF it just sleeps $timeout, so polling loops do not
# spin)
sub pump {
    my ($timeout, @c) = @_;
    @c = grep { !$_->{eof} } @c;
    if (!@c) {
        select(undef, undef, undef, $timeout) if $timeout > 0;
        return 0;
    }
    my %by = map { fileno($_->{s}) => $_ } @c;
    my @r = IO::Select->new(map { $_->{s} } @c)->can_read($timeout);
    $by{ fileno $_ }->_read for @r;
    return scalar @r;
}


# Collab::Chat::settle($secs, @clients): reads whatever arrives for $secs
sub settle {
    my ($secs, @c) = @_;
    my $end = time + $secs;
    pump($end - time, @c) while time < $end;
}


# the first message the predicate ($_) accepts, removed from the inbox;
# undef after $timeout seconds or at EOF
sub take {
    my ($self, $pred, $timeout) = @_;
    my $end = time + ($timeout // 10);
    while (1) {
        my $in = $self->{inbox};
        for my $i (0 .. $#$in) {
            local $_ = $in->[$i];
            return splice(@$in, $i, 1) if $pred->();
        }
        return undef if $self->{eof} || time >= $end;
        pump($end - time, $self);
    }
}


# every message of the inbox the predicate accepts, removed from it
sub grab {
    my ($self, $pred) = @_;
    my (@yes, @no);
    for (@{ $self->{inbox} }) {
        if ($pred->()) { push @yes, $_ } else { push @no, $_ }
    }
    $self->{inbox} = \@no;
    return @yes;
}


# the inbox minus what a test does not care about
sub pending {
    my ($self) = @_;
    pump(0, $self);
    return @{ $self->{inbox} };
}


# sends the request with a fresh "ref" (unless it has one) and returns
# the reply carrying that ref
sub req {
    my ($self, %r) = @_;
    my $timeout = delete $r{-timeout} // 15;
    $r{ref} //= 'r' . ++$NREF;
    my $ref = $r{ref};
    $self->send(\%r);
    return $self->take(sub { defined $_->{ref} && $_->{ref} eq $ref },
                       $timeout)
        // { op => '(no reply)', ref => $ref };
}


# ops without a reply on success (presence, typing): the request, then a
# ping; the error to the request if any, else undef (the ping's pong
# proves the request was handled)
sub quiet {
    my ($self, %r) = @_;
    my $ref = 'q' . ++$NREF;
    $self->send({ %r, ref => $ref });
    my $pong = $self->req(op => 'ping');
    my $err = $self->take(sub { ($_->{ref} // '') eq $ref }, 0);
    return $err if $err;
    return $pong->{op} eq 'pong' ? undef : $pong;
}


sub join_session {
    my ($self, $slug, %o) = @_;
    return $self->req(op => 'join', session => $slug, %o);
}


# --- message events ---------------------------------------------------------

# the next $n "message" events in arrival order (fewer on timeout)
sub events {
    my ($self, $n, $timeout) = @_;
    my $end = time + ($timeout // 15);
    my @ev;
    while (@ev < $n) {
        my $e = $self->take(sub { $_->{op} eq 'message' }, $end - time)
            // last;
        push @ev, $e;
    }
    return @ev;
}


# every message event that arrives within $wait seconds
sub drain_events {
    my ($self, $wait) = @_;
    my @ev;
    while (my $e = $self->take(sub { $_->{op} eq 'message' }, $wait)) {
        push @ev, $e;
    }
    return @ev;
}


# --- presence events --------------------------------------------------------

# as a grab() predicate ($_) or a function
sub is_presence { ((@_ ? $_[0] : $_)->{op} // '') eq 'presence' }


# (user => $item) of an event's list
sub items {
    my ($ev, $list) = @_;
    return map { $_->{user} => $_ } @{ $ev->{$list} // [] };
}


# waits for a presence event whose $list ("joins", "leaves", "updates")
# has $user (and status $status when given); returns that item
sub wait_presence {
    my ($self, $list, $user, $status, $timeout) = @_;
    my $item;
    my $ev = $self->take(sub {
        return 0 unless is_presence($_);
        my %i = items($_, $list);
        return 0 unless $i{$user};
        return 0 if defined $status && ($i{$user}{status} // '') ne $status;
        $item = $i{$user};
        1;
    }, $timeout // 10);
    return $ev ? $item : undef;
}


# waits until every one of @$users appeared in $list of some presence
# event; returns {user => item} of those seen
sub wait_all {
    my ($self, $list, $users, $timeout) = @_;
    my %got;
    my $end = time + ($timeout // 10);
    while (grep { !$got{$_} } @$users) {
        my $ev = $self->take(sub {
            return 0 unless is_presence($_);
            my %i = items($_, $list);
            grep { $i{$_} } @$users;
        }, $end - time) or last;
        my %i = items($ev, $list);
        $got{$_} //= $i{$_} for grep { $i{$_} } @$users;
    }
    return \%got;
}


# every presence event of the inbox mentioning $user: [list, item] pairs
sub presence_about {
    my ($self, $user) = @_;
    my @r;
    for my $ev (grep { is_presence($_) } @{ $self->{inbox} }) {
        for my $list (qw(joins leaves updates)) {
            my %i = items($ev, $list);
            push @r, [$list, $i{$user}] if $i{$user};
        }
    }
    return @r;
}


sub wait_typing {
    my ($self, $user, $on, $timeout) = @_;
    return $self->take(sub {
        ($_->{op} // '') eq 'typing' && ($_->{user} // '') eq $user
            && !!$_->{on} == !!$on
    }, $timeout // 10);
}


# the worker process holding this connection (of those in @pids): the
# server side socket is the one whose peer is our local port; its inode is
# among the worker's descriptors
sub worker {
    my ($self, @pids) = @_;
    my $lport = $self->{s}->sockport;
    my $inode;
    for my $f ('/proc/net/tcp', '/proc/net/tcp6') {
        CORE::open(my $fh, '<', $f) or next;
        while (my $line = <$fh>) {
            my @x = split ' ', $line;
            next unless @x > 9 && $x[1] =~ /:([0-9A-F]{4})$/;
            next unless hex($1) == $self->{port};
            next unless $x[2] =~ /:([0-9A-F]{4})$/ && hex($1) == $lport;
            $inode = $x[9];
        }
    }
    return undef unless $inode;
    for my $pid (@pids) {
        for my $fd (glob "/proc/$pid/fd/*") {
            my $l = readlink($fd) // next;
            return $pid if $l eq "socket:[$inode]";
        }
    }
    return undef;
}

1;
