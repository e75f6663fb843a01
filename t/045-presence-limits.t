#!/usr/bin/perl
#
# 045-presence-limits.t: rate limits kept in the zone per user (issue 4),
# and presence without a zone.
#
#   - collab_rate_presence 1r/m burst=1 (as limit_req: burst + 1 in a
#     row): a user's third presence/typing request in a row is RATE_LIMITED with retryAfter (ms), and nothing
#     of it is applied (no typing event, no status change for others);
#     the bucket is the user's, not the connection's: a second tab is
#     limited too, while another user is not;
#   - collab_rate_messages 1r/m burst=1: the third send is RATE_LIMITED
#     with retryAfter, no row is written, no ack comes;
#   - collab_rate_presence 5r/s burst=0 (no burst, as in limit_req): a
#     user's first request goes through, a second one right after it is
#     limited;
#   - without collab_zone: join works with an empty presence list, and
#     presence/typing are UNAVAILABLE.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;

{
# --- a collab.v1 client on the harness's raw WebSocket ----------------------
#
# (The same small client is in every t/04x-presence-*.t, after the one of
# t/03x-chat-*.t.)  Frames from the server are parsed into an inbox of
# decoded JSON messages as they arrive; take() removes the first message a
# predicate accepts, waiting for more if needed, so replies and events may
# interleave in any order without being lost.  The identity is passed in
# the query string (collab_user $arg_user; collab_user_name $arg_name).

package Chat;

use strict;
use warnings;

use IO::Select;
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes qw(time);

my $NREF = 0;

# Chat->open($t, user => 'ann', name => 'Ann', port => ...)
sub open {
    my ($class, $t, %o) = @_;
    my $path = '/chat?user=' . $o{user};
    $path .= '&name=' . $o{name} if defined $o{name};
    my %h = ('Sec-WebSocket-Protocol' => 'collab.v1');
    $h{-port} = $o{port} if defined $o{port};
    my $s = $t->ws_raw($path, %h);
    my $self = bless { t => $t, s => $s, inbox => [], user => $o{user},
                       port => $o{port} // $t->port }, $class;
    $self->_parse;
    return $self;
}

sub user { $_[0]{user} }

sub close {
    my ($self) = @_;
    CORE::close($self->{s}) if $self->{s} && !$self->{closed}++;
    $self->{eof} = 1;
}

sub send {
    my ($self, $req) = @_;
    return $self->{t}->ws_send($self->{s}, opcode => 1,
                               payload => encode_json($req));
}

# a close frame with the code, then the socket is shut
sub ws_close {
    my ($self, $code) = @_;
    $self->{t}->ws_send($self->{s}, opcode => 8,
                        payload => pack('n', $code // 1000));
    $self->close;
}

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
        $off += 4 if $b1 & 0x80;
        last if $have < $off + $len;
        my $payload = substr($$buf, $off, $len);
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
        next if $op != 1;
        my $msg = eval { decode_json($payload) }
            // { op => '(not JSON)', raw => $payload };
        push @{ $self->{inbox} }, $msg;
    }
}

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

# Chat::pump($timeout, @clients): waits up to $timeout for any of them to
# be readable and reads those that are
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

# Chat::settle($secs, @clients): reads whatever arrives for $secs
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

# sends the request with a fresh "ref" and returns the reply to it
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

# the worker process holding this connection: the server side socket is
# the one whose peer is our local port; its inode is among the worker's
# descriptors
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

}

my $t = Collab::Test->new;
$t->start_pg;

my $conf = <<'CONF';
    collab_postgres "%%PG_DSN%%" pool=4;
    %%ZONE%%
    collab_presence_batch 100ms;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user $arg_user;
            collab_user_name $arg_name;
        }
    }
CONF

sub conf {
    my ($port, $zone) = @_;
    (my $c = $conf) =~ s/%%PORT%%/%%PORT$port%%/;
    $c =~ s/%%ZONE%%/$zone/;
    return $c;
}

$t->start_nginx(conf(1, 'collab_zone collab 1m;
    collab_rate_presence 1r/m burst=1;
    collab_rate_messages 1r/m burst=1;'), name => 'rl', worker_processes => 2);
$t->start_nginx(conf(2, 'collab_zone collab 1m;
    collab_rate_presence 5r/s burst=0;'), name => 'b0');
$t->start_nginx(conf(3, ''), name => 'nozone');

sub open_user {
    my ($port, $user) = @_;
    return Chat->open($t, user => $user, name => ucfirst $user,
                      port => $t->port($port));
}

sub session {
    my ($c) = @_;
    my $r = $c->req(op => 'create', title => 'limits', isPublic => \1);
    my $slug = $r->{session}{id} or BAIL_OUT('no session');
    is($c->join_session($slug)->{op}, 'joined', $c->user . ' joined');
    return $slug;
}

# --- presence and typing ------------------------------------------------------

my $obs = open_user(1, 'obs');
my $slug = session($obs);
my $pat = open_user(1, 'pat');
my $pat2 = open_user(1, 'pat');
is($pat->join_session($slug)->{op}, 'joined', 'pat joined');
is($pat2->join_session($slug)->{op}, 'joined', 'pat joined in tab 2');
ok($obs->wait_presence('joins', 'pat'), 'obs sees pat');

is($pat->quiet(op => 'presence', session => $slug, status => 'away'), undef,
   'request 1 (presence away in tab 1) accepted');
is($pat2->quiet(op => 'presence', session => $slug, status => 'away'), undef,
   'request 2 (presence away in tab 2) accepted');
ok($obs->wait_presence('updates', 'pat', 'away'), 'obs sees pat away');
Chat::settle(0.5, $obs);
$obs->grab(sub { 1 });

my $e = $pat->quiet(op => 'typing', session => $slug, on => \1);
is($e && $e->{code}, 'RATE_LIMITED', 'request 3 (typing): RATE_LIMITED');
ok($e && ($e->{retryAfter} // 0) > 0, 'with retryAfter > 0: '
   . ($e && $e->{retryAfter} // 'none'));
# 1r/m is kept as 16 per 1000s (as limit_req does): about 62.5s
ok($e && ($e->{retryAfter} // 0) <= 65_000,
   'about a minute at most (1r/m)');

$e = $pat2->quiet(op => 'presence', session => $slug, status => 'online');
is($e && $e->{code}, 'RATE_LIMITED',
   'presence online in the other tab: RATE_LIMITED (the bucket is the '
   . "user's)");
Chat::settle(1.5, $obs);
is(scalar($obs->grab(sub { ($_->{op} // '') eq 'typing' })), 0,
   'no typing event for the refused typing');
is_deeply([$obs->presence_about('pat')], [],
          'no presence update for the refused status');
my $j = open_user(1, 'new')->join_session($slug);
my %p = map { $_->{user} => $_ } @{ $j->{presence} // [] };
is($p{pat} && $p{pat}{status}, 'away', 'pat still away in a snapshot');
ok($p{pat} && !$p{pat}{typing}, 'and not typing');

my $ona = open_user(1, 'ona');
is($ona->join_session($slug)->{op}, 'joined', 'ona joined');
is($ona->quiet(op => 'typing', session => $slug, on => \1), undef,
   'another user is not limited');
ok($obs->wait_typing('ona', 1), 'her typing goes out');

# --- messages -----------------------------------------------------------------

my $dbh = $t->pg_dbh;
my @acks;
for my $n (1 .. 3) {
    push @acks, $ona->req(op => 'send', session => $slug, body => "m$n",
                          clientMsgId => "ona-$n");
}
is_deeply([map { $_->{op} } @acks[0, 1]], [qw(ack ack)],
          'sends 1 and 2 acked');
is($acks[2]{code}, 'RATE_LIMITED', 'send 3: RATE_LIMITED');
ok(($acks[2]{retryAfter} // 0) > 0, 'with retryAfter > 0');
my ($rows) = $dbh->selectrow_array(
    "SELECT count(*) FROM chat_messages m JOIN chat_sessions s"
    . " ON s.id = m.session_id WHERE s.slug = ?", undef, $slug);
is($rows, 2, 'two rows, the refused message is not stored');
Chat::settle(1, $ona);
is(scalar($ona->grab(sub { ($_->{op} // '') eq 'ack' })), 0,
   'no late ack for it');

# --- burst=0 --------------------------------------------------------------------

my $zed = open_user(2, 'zed');
my $s0 = session($zed);
$e = $zed->quiet(op => 'typing', session => $s0, on => \1);
is($e, undef, "burst=0: a user's very first request goes through")
    or diag(explain($e));
$e = $zed->quiet(op => 'typing', session => $s0, on => \0);
is($e && $e->{code}, 'RATE_LIMITED', 'burst=0: a second one at once does not')
    or diag(explain($e));
sleep 0.5;
is($zed->quiet(op => 'typing', session => $s0, on => \0), undef,
   'burst=0: one after 500ms (5r/s) does');

# --- no zone ----------------------------------------------------------------------

my $nz = open_user(3, 'nz');
my $r = $nz->req(op => 'create', title => 'nozone', isPublic => \1);
$j = $nz->join_session($r->{session}{id});
is($j->{op}, 'joined', 'no zone: join works');
is_deeply($j->{presence}, [], 'with an empty presence list');
for my $op ([presence => status => 'away'], [typing => on => \1]) {
    $e = $nz->req(op => $op->[0], session => $r->{session}{id},
                  $op->[1] => $op->[2]);
    is($e->{code}, 'UNAVAILABLE', "no zone: $op->[0] is UNAVAILABLE");
}
is($nz->req(op => 'send', session => $r->{session}{id}, body => 'x',
            clientMsgId => 'x')->{op}, 'ack', 'no zone: send not limited');

done_testing();
