#!/usr/bin/perl
#
# 031-chat-resume.t: join with "since" returns exactly what a client
# missed (issue 3, invariant 2 of DESIGN.md).
#
# A client that disconnects and comes back with since = the last seq it
# got must receive every message after it, in order, with no gap and no
# duplicate: in one page when few were missed, in pages of 200 with
# more: true when many were, and then live events with nothing lost in
# between, also while others keep sending during the join.  Checked
# against chat_messages with DBI.
#
# Why: resume is what makes a dropped connection harmless; a gap or a
# duplicate here is a silently wrong chat.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;

my $t = Collab::Test->new;
$t->start_pg;

$t->start_nginx(<<'CONF');
    collab_postgres "%%PG_DSN%%" pool=2 timeout=10s;
    collab_batch_window 2ms;
    collab_join_history 50;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /chat {
            collab_websocket;
            collab_user $http_x_user_id;
            collab_user_name $http_x_user_name;
            collab_send_queue_size 8m;
        }
    }
CONF

my $dbh = $t->pg_dbh;

sub rows { $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]) }

my $next = 0;           # the clientMsgId counter of the sender

# sends n messages from $c in windows of 50, returns the acks
sub send_many {
    my ($c, $slug, $n) = @_;
    my @acks;
    my $sent = 0;
    my $end = time + 60;
    while (@acks < $n && time < $end) {
        while ($sent < $n && $sent - @acks < 50) {
            $next++;
            $c->send({ op => 'send', session => $slug, body => "m$next",
                       clientMsgId => "c$next" });
            $sent++;
        }
        my $a = $c->take(sub { $_->{op} eq 'ack' || $_->{op} eq 'error' },
                         $end - time) or last;
        push @acks, $a;
        # the sender's own events are not needed here
        @{ $c->{inbox} } = grep { $_->{op} ne 'message' } @{ $c->{inbox} };
    }
    is(scalar(grep { $_->{op} eq 'ack' } @acks), $n, "$n sends acked");
    return @acks;
}

# joins with since and follows "more" until caught up; returns the
# messages of all pages and the number of pages
sub resume {
    my ($c, $slug, $since) = @_;
    my (@msgs, $pages, $last);
    while (1) {
        my $r = $c->req(op => 'join', session => $slug, since => $since);
        if ($r->{op} ne 'joined') {
            fail("join since $since: $r->{op} " . ($r->{code} // ''));
            last;
        }
        $pages++;
        $last = $r;
        push @msgs, @{ $r->{messages} };
        last unless $r->{more};
        last if $pages > 100;
        $since = $r->{messages}[-1]{seq} // $since;
    }
    return (\@msgs, $pages, $last);
}

sub seqs { [map { $_->{seq} } @{ $_[0] }] }

my $ann = Collab::Chat->open($t, user => 'ann', name => 'Ann');
my $bob = Collab::Chat->open($t, user => 'bob', name => 'Bob');

my $r = $ann->req(op => 'create', title => 'resume', isPublic => \1);
my $slug = $r->{session}{id};
my $sid = rows('SELECT id FROM chat_sessions WHERE slug = ?', $slug);
ok($sid, 'session created');

is($ann->req(op => 'join', session => $slug)->{op}, 'joined', 'ann joins');
is($bob->req(op => 'join', session => $slug, since => 0)->{op}, 'joined',
   'bob joins with since 0');

send_many($ann, $slug, 10);
my @ev = $bob->events(10);
is_deeply(seqs(\@ev), [1 .. 10], 'bob got 1..10 live');
my $bob_last = $ev[-1]{seq};

# bob drops; 15 more are sent; bob comes back with since
$bob->close;
send_many($ann, $slug, 15);

$bob = Collab::Chat->open($t, user => 'bob', name => 'Bob');
$r = $bob->req(op => 'join', session => $slug, since => $bob_last);
is($r->{op}, 'joined', 'bob resumes with since 10');
is_deeply(seqs($r->{messages}), [11 .. 25], 'exactly the 15 missed, in order');
ok(!$r->{more}, 'more: false');
is($r->{lastSeq}, 25, 'lastSeq 25');
is_deeply([map { $_->{body} } @{ $r->{messages} }],
          [map { $_->[0] } @{ $dbh->selectall_arrayref(
              'SELECT body FROM chat_messages WHERE session_id = ?
               AND seq > 10 ORDER BY seq', undef, $sid) }],
          'bodies as in the table');
is($r->{messages}[0]{user}, 'ann', 'messages carry the author');
is($r->{messages}[0]{clientMsgId}, 'c11', 'and the clientMsgId');
is($r->{messages}[0]{kind}, 'user', 'and the kind');

send_many($ann, $slug, 1);
@ev = $bob->events(1);
is_deeply(seqs(\@ev), [26], 'then live events resume at 26');
is(scalar($bob->drain_events(0.3)), 0, 'and nothing twice');
$bob_last = 26;

# since = lastSeq: nothing missed
$r = $bob->req(op => 'join', session => $slug, since => 26);
is_deeply([$r->{op}, scalar @{ $r->{messages} // [1] }, !!$r->{more}],
          ['joined', 0, ''], 'since = lastSeq: no messages, no more');


# --- more than 200 missed: pages of 200 -------------------------------------

$bob->close;
send_many($ann, $slug, 474);            # up to seq 500
is(rows('SELECT last_seq FROM chat_sessions WHERE id = ?', $sid), 500,
   'last_seq 500');

$bob = Collab::Chat->open($t, user => 'bob', name => 'Bob');
$r = $bob->req(op => 'join', session => $slug, since => 26);
is_deeply(seqs($r->{messages}), [27 .. 226], 'the first page: 200 messages');
ok($r->{more}, 'more: true');
$r = $bob->req(op => 'join', session => $slug, since => 226);
is_deeply(seqs($r->{messages}), [227 .. 426], 'the second page');
ok($r->{more}, 'more: true');
$r = $bob->req(op => 'join', session => $slug, since => 426);
is_deeply(seqs($r->{messages}), [427 .. 500], 'the last page: 74');
ok(!$r->{more}, 'more: false');
is($r->{lastSeq}, 500, 'lastSeq 500');

send_many($ann, $slug, 1);
@ev = $bob->events(1);
is_deeply(seqs(\@ev), [501], 'live after the last page');

# exactly 200 missed: one full page; more must not hide a message
$bob->close;
send_many($ann, $slug, 200);            # 502..701
$bob = Collab::Chat->open($t, user => 'bob', name => 'Bob');
my ($msgs, $pages) = resume($bob, $slug, 501);
is_deeply(seqs($msgs), [502 .. 701], 'exactly 200 missed: all of them');
ok($pages == 1 || $pages == 2, "in $pages page(s)");
send_many($ann, $slug, 1);
is_deeply(seqs([$bob->events(1)]), [702], 'then live');


# --- join without since -----------------------------------------------------

my $cat = Collab::Chat->open($t, user => 'cat');
$r = $cat->req(op => 'join', session => $slug);
is_deeply(seqs($r->{messages}), [653 .. 702],
          'without since: the last 50 (collab_join_history)');
ok($r->{more}, 'more: older ones exist');
is($r->{lastSeq}, 702, 'lastSeq');


# --- a join while others send: no gap, no duplicate -------------------------
#
# ann sends continuously; dan joins with since 0 while she does and
# follows "more"; everything dan receives (pages, then events) must be
# exactly 1..N in order once ann stops.

my $dan = Collab::Chat->open($t, user => 'dan');
my $total = 702;
my $want = $total + 600;
my $sent = 0;
my $acked = 0;
my @got;
my $dan_since = 0;
my $joined = 0;
my $join_ref;
my $end = time + 90;

while (($acked < 600 || !$joined || (@got && $got[-1] < $want)
        || !@got) && time < $end)
{
    while ($sent < 600 && $sent - $acked < 30) {
        $next++;
        $ann->send({ op => 'send', session => $slug, body => "m$next",
                     clientMsgId => "c$next" });
        $sent++;
    }
    if (!$joined && !$join_ref && $sent >= 100) {
        $join_ref = "j$dan_since";
        $dan->send({ op => 'join', session => $slug, since => $dan_since,
                     ref => $join_ref });
    }
    Collab::Chat::pump(0.05, $ann, $dan);
    my @in = @{ $ann->{inbox} };
    @{ $ann->{inbox} } = ();
    $acked += grep { $_->{op} eq 'ack' } @in;
    if (my @e = grep { $_->{op} eq 'error' } @in) {
        fail("ann got an error: $e[0]{code}");
        last;
    }
    while (my $m = shift @{ $dan->{inbox} }) {
        if ($m->{op} eq 'joined') {
            push @got, map { $_->{seq} } @{ $m->{messages} };
            $join_ref = undef;
            if ($m->{more}) {
                $dan_since = $got[-1] // $dan_since;
            } else {
                $joined = 1;
            }
        } elsif ($m->{op} eq 'message') {
            push @got, $m->{seq};
        } else {
            fail("dan got $m->{op} " . ($m->{code} // ''));
        }
    }
}
is($acked, 600, '600 more sent while dan joined');
ok($joined, 'dan caught up');
is(scalar @got, $want, "dan got $want messages");
is_deeply(\@got, [1 .. $want], 'exactly 1..N in order: no gap, no duplicate')
    or diag('first difference at index '
            . (grep { $got[$_] != $_ + 1 } 0 .. $#got)[0]);
is(rows('SELECT count(*) FROM chat_messages WHERE session_id = ?', $sid),
   $want, 'the table has them all');
is(rows('SELECT max(seq) - min(seq) + 1 FROM chat_messages
         WHERE session_id = ?', $sid), $want, 'and its seqs have no gap');


# --- since beyond the newest message ----------------------------------------

is(scalar($cat->drain_events(0.5)), 600, 'cat, joined all along, got 600');
$r = $cat->req(op => 'join', session => $slug, since => 100000);
is($r->{op}, 'joined', 'since beyond the newest: joined');
is_deeply($r->{messages}, [], 'with no messages');
is($r->{lastSeq}, $want,
   "lastSeq is the session's newest seq, not the client's since");
send_many($ann, $slug, 1);
is_deeply(seqs([$cat->events(1, 5)]), [$want + 1],
          'and the next message still reaches that connection');

for my $c ($ann, $bob, $cat, $dan) {
    ok(!$c->{masked}, $c->user . ': no masked frame from the server');
    $c->close;
}
$dbh->disconnect;

done_testing();
