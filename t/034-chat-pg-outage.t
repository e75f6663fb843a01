#!/usr/bin/perl
#
# 034-chat-pg-outage.t: PostgreSQL stops in the middle of traffic and
# comes back (issue 3; invariants 2 and 7 of DESIGN.md).
#
# Three senders keep sending while PostgreSQL is stopped (pg_ctl -m fast,
# from a child process so that traffic goes on during the shutdown) and
# later started again on the same port and data directory.  Checked:
# every send got exactly one answer, an ack or UNAVAILABLE (nothing hangs,
# no other code); every acked message is in the table with its acked
# seq; seqs stay 1..N with no gap; nginx keeps serving while PostgreSQL
# is down (ping/pong, new connections, ops answered UNAVAILABLE); sends
# succeed again once it is back (polled with a loose deadline: the pool
# reconnects with backoff up to 10 s); and resending every UNAVAILABLE
# clientMsgId, as docs/PROTOCOL.md tells clients to, leaves each message
# stored exactly once.
#
# The harness cannot restart PostgreSQL on the same port and data
# directory, so restart_pg() below does it (with the harness's options).

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use POSIX qw(_exit WNOHANG);
use Time::HiRes qw(time sleep);
use Collab::Test;
use Collab::Chat;

my $t = Collab::Test->new;
$t->start_pg;

$t->start_nginx(<<'CONF');
    collab_postgres "%%PG_DSN%%" pool=2 timeout=3s;
    collab_batch_window 2ms;

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

my $IS_ROOT = $> == 0;

sub pg_ctl_cmd {
    my (@args) = @_;
    my ($bin) = sort { $b cmp $a } glob('/usr/lib/postgresql/*/bin');
    my $pg_ctl = $bin ? "$bin/pg_ctl" : 'pg_ctl';
    return (($IS_ROOT ? ('runuser', '-u', 'postgres', '--') : ()),
            $pg_ctl, '-D', $t->dir . '/pg', @args);
}

# the harness's start_pg() options, on the same port and data directory
sub restart_pg {
    my $run = $t->dir . '/pg-run';
    my $port = $t->pg_port;
    my $o = "-c listen_addresses=127.0.0.1 -p $port -k $run"
        . " -c fsync=off -c synchronous_commit=off -c full_page_writes=off";
    my $rc = system(pg_ctl_cmd('-s', '-w', '-t', 60,
                               '-l', "$run/postgres.log", '-o', $o,
                               'start'));
    # so that the harness stops it at the end
    $t->{pg} = { data => $t->dir . '/pg', run => $run };
    return $rc == 0;
}

sub rows {
    my $dbh = $t->pg_dbh;
    my @r = $dbh->selectrow_array($_[0], undef, @_[1 .. $#_]);
    $dbh->disconnect;
    return $r[0];
}

my $owner = Collab::Chat->open($t, user => 'owner');
my $slug = $owner->req(op => 'create', title => 'outage', isPublic => \1)
    ->{session}{id};
my $sid = rows('SELECT id FROM chat_sessions WHERE slug = ?', $slug);
ok($sid, 'session created');

my @senders = map { Collab::Chat->open($t, user => "s$_") } 1 .. 3;
my $watcher = Collab::Chat->open($t, user => 'watcher');
for my $c (@senders, $watcher) {
    is($c->req(op => 'join', session => $slug)->{op}, 'joined',
       $c->user . ' joined');
}

my %answer;             # clientMsgId => ['ack', seq] or ['error', code]
my %sent_at;            # clientMsgId => time sent
my $seqno = 0;
my $WINDOW = 5;

# one round of traffic: top up every sender's window, read answers
sub traffic {
    my ($dur) = @_;
    my $end = time + $dur;
    while (time < $end) {
        my $t0 = time;
        for my $c (@senders) {
            my $out = grep { !$answer{$_} } @{ $c->{cmids} // [] };
            while ($out < $WINDOW) {
                my $id = $c->user . '-' . ++$seqno;
                push @{ $c->{cmids} }, $id;
                $sent_at{$id} = time;
                $c->send({ op => 'send', session => $slug, body => "m $id",
                           clientMsgId => $id, ref => $id });
                $out++;
            }
        }
        Collab::Chat::pump(0.02, @senders);
        collect();
        my $left = 0.02 - (time - $t0);
        sleep $left if $left > 0;
    }
}

sub collect {
    for my $c (@senders) {
        for my $m (@{ $c->{inbox} }) {
            next unless $m->{op} eq 'ack' || $m->{op} eq 'error';
            my $id = $m->{ref} // next;
            $answer{$id} = $m->{op} eq 'ack'
                ? ['ack', $m->{seq}] : ['error', $m->{code}];
        }
        @{ $c->{inbox} } = ();
    }
}

sub acked { grep { $answer{$_}[0] eq 'ack' } keys %answer }
sub unavailable {
    grep { $answer{$_}[0] eq 'error' && $answer{$_}[1] eq 'UNAVAILABLE' }
        keys %answer
}

# phase 1: traffic with PostgreSQL up
traffic(1.5);
my $acked_before = () = acked();
ok($acked_before > 20, "traffic flows ($acked_before acked)");
is(scalar(unavailable()), 0, 'no UNAVAILABLE while PostgreSQL is up');

# phase 2: stop it while the senders go on
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    system(pg_ctl_cmd('-s', '-w', '-t', 30, '-m', 'fast', 'stop'));
    _exit(0);
}
while (waitpid($pid, WNOHANG) == 0) {
    traffic(0.1);
}
delete $t->{pg};
traffic(2);
ok(scalar(unavailable()) > 0,
   'sends while PostgreSQL is down are answered UNAVAILABLE ('
   . scalar(unavailable()) . ')');

# nginx keeps serving meanwhile
is_deeply($watcher->req(op => 'ping', ref => 'p1'), { op => 'pong',
          ref => 'p1' }, 'ping/pong works while PostgreSQL is down');
my $r = $watcher->req(op => 'history', session => $slug);
is_deeply([$r->{op}, $r->{code}], ['error', 'UNAVAILABLE'],
          'history: UNAVAILABLE');
$r = $watcher->req(op => 'join', session => $slug, since => 0);
is_deeply([$r->{op}, $r->{code}], ['error', 'UNAVAILABLE'],
          'join: UNAVAILABLE');
my $late = Collab::Chat->open($t, user => 'late', name => 'Late');
ok($late, 'a new connection is accepted while PostgreSQL is down');
is_deeply($late->req(op => 'ping', ref => 2), { op => 'pong', ref => 2 },
          'and answers ping');
$r = $late->req(op => 'create', title => 'during the outage');
is_deeply([$r->{op}, $r->{code}], ['error', 'UNAVAILABLE'],
          'create on it: UNAVAILABLE');
$r = $late->req(op => 'sessions');
is_deeply([$r->{op}, $r->{code}], ['error', 'UNAVAILABLE'],
          'sessions: UNAVAILABLE');

# phase 3: PostgreSQL is back; wait for all answers, then for recovery
ok(restart_pg(), 'PostgreSQL restarted on the same port and data');

my $end = time + 20;
while (time < $end && grep { !$answer{$_} } keys %sent_at) {
    Collab::Chat::pump(0.1, @senders);
    collect();
}
my @lost = grep { !$answer{$_} } keys %sent_at;
is(scalar @lost, 0, 'every send got an answer') or diag("@lost[0 .. 4]");
my %codes;
$codes{ $_->[0] eq 'ack' ? 'ack' : $_->[1] }++ for values %answer;
is_deeply([sort keys %codes], ['UNAVAILABLE', 'ack'],
          'the answers are acks and UNAVAILABLE only')
    or diag(explain(\%codes));

# sends work again once the pool reconnects (backoff: up to 10 s)
my $probe = $senders[0];
my ($back, $tries) = (0, 0);
$end = time + 45;
while (time < $end) {
    $tries++;
    $r = $probe->req(op => 'send', session => $slug, body => "probe $tries",
                     clientMsgId => "probe-$tries", -timeout => 10);
    if ($r->{op} eq 'ack') {
        $back = 1;
        last;
    }
    is($r->{code}, 'UNAVAILABLE', 'a probe before recovery: UNAVAILABLE')
        if $r->{op} ne 'error' || $r->{code} ne 'UNAVAILABLE';
    sleep 0.5;
}
ok($back, "sends succeed again after PostgreSQL is back ($tries probes)");

$r = $late->req(op => 'create', title => 'after the outage');
is($r->{op}, 'created',
   'the connection opened during the outage works now');

# every acked message is in the table with its seq
my $dbh = $t->pg_dbh;
my %row = map { $_->[0] => $_->[1] } @{ $dbh->selectall_arrayref(
    'SELECT client_msg_id, seq FROM chat_messages WHERE session_id = ?',
    undef, $sid) };
my @acked = acked();
my @missing = grep { !defined $row{$_} || $row{$_} != $answer{$_}[1] }
              @acked;
is(scalar @missing, 0, scalar(@acked) . ' acked messages, all in the table'
   . ' with their seq') or diag("missing: @missing[0 .. 4]");
my $seqs = $dbh->selectcol_arrayref(
    'SELECT seq FROM chat_messages WHERE session_id = ? ORDER BY seq',
    undef, $sid);
is_deeply($seqs, [1 .. scalar @$seqs], 'seqs are 1..N with no gap');

# clients resend what got UNAVAILABLE, with the same clientMsgId
my @retry = unavailable();
my %by_user = map { $_->user => $_ } @senders;
my ($reacked, $was_stored) = (0, 0);
for my $id (@retry) {
    my ($u) = $id =~ /^(s\d+)-/;
    $r = $by_user{$u}->req(op => 'send', session => $slug, body => "m $id",
                           clientMsgId => $id);
    $reacked++ if $r->{op} eq 'ack';
    $was_stored++ if $r->{duplicate};
}
is($reacked, scalar @retry, 'every UNAVAILABLE send is acked when resent');
diag("of " . scalar(@retry) . " UNAVAILABLE sends, $was_stored had been"
     . " committed already (in flight when PostgreSQL stopped)");

my ($n, $distinct) = $dbh->selectrow_array(
    q{SELECT count(*), count(DISTINCT client_msg_id) FROM chat_messages
      WHERE session_id = ? AND client_msg_id NOT LIKE 'probe-%'},
    undef, $sid);
is($n, scalar(keys %sent_at), 'after the resends every message is stored');
is($distinct, $n, 'each exactly once');
$seqs = $dbh->selectcol_arrayref(
    'SELECT seq FROM chat_messages WHERE session_id = ? ORDER BY seq',
    undef, $sid);
is_deeply($seqs, [1 .. scalar @$seqs], 'and seqs are still 1..N');
is($dbh->selectrow_array('SELECT last_seq FROM chat_sessions WHERE id = ?',
                         undef, $sid), scalar @$seqs, 'last_seq matches');
$dbh->disconnect;

# the watcher, joined all along, saw every stored message in order
my @ev = map { $_->{seq} } $watcher->drain_events(0.5);
is_deeply(\@ev, [1 .. scalar @$seqs],
          'a connection joined through the outage got every message once,'
          . ' in order');

for my $c (@senders, $watcher, $late, $owner) {
    $c->close;
}

done_testing();
