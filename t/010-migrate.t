#!/usr/bin/perl
#
# 010-migrate.t: the PostgreSQL schema (sql/001_init.sql), the migration tool
# (sql/migrate) and the SQL statements sql/README.md recommends to the C code.
#
# Why: every later test and the module itself trust that migrate is
# idempotent, refuses a newer database, serialises concurrent runs and rolls
# back a failing file; that the constraints reject bad rows; and that the
# append statements give each session seqs 1..N with no gap even with many
# concurrent writers and resent client_msg_ids.  The statements are read
# from sql/README.md by their "-- statement: NAME" line, so what the README
# recommends is exactly what is tested here.
#
# Real PostgreSQL only: the harness (t/lib/Collab/Test.pm) starts it; each
# part below works in its own fresh database on that server, dropped at the
# end.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Collab::Test;
use DBI;
use File::Copy qw(copy);
use File::Temp qw(tempdir);
use POSIX qw(_exit);

my $ROOT = "$FindBin::Bin/..";
my $SQL_DIR = "$ROOT/sql";
my $MIGRATE = "$SQL_DIR/migrate";
my $TMP = tempdir('collab-t010-XXXXXX', TMPDIR => 1, CLEANUP => 1);

my ($PG, $HARNESS);


# --- the harness's PostgreSQL, extra databases on it ----------------------

sub pg_server {
    $HARNESS = Collab::Test->new;
    $HARNESS->start_pg;                 # runs sql/migrate on its own db

    my $dbh = $HARNESS->pg_dbh;
    my %pg = (host => $dbh->{pg_host} || '127.0.0.1', port => $dbh->{pg_port},
              user => $dbh->{pg_user}, admin_db => $dbh->{pg_db});
    $dbh->disconnect;
    return \%pg;
}


sub conninfo {
    my ($db) = @_;
    return "host=$PG->{host} port=$PG->{port} user=$PG->{user} dbname=$db";
}


sub connect_db {
    my ($db) = @_;
    return DBI->connect("dbi:Pg:host=$PG->{host};port=$PG->{port};"
                        . "dbname=$db", $PG->{user}, undef,
                        { RaiseError => 1, PrintError => 0, AutoCommit => 1,
                          AutoInactiveDestroy => 1 });
}


my $DB_SEQ = 0;

sub fresh_db {
    my $name = sprintf 'collab_t010_%d_%d', $$, ++$DB_SEQ;
    my $admin = connect_db($PG->{admin_db});
    $admin->do("CREATE DATABASE $name");
    $admin->disconnect;
    return $name;
}


# --- running sql/migrate --------------------------------------------------

sub spawn {
    my (@cmd) = @_;
    my $n = ++$DB_SEQ;
    my %r = (out => "$TMP/cmd$n.out", err => "$TMP/cmd$n.err");

    $r{pid} = fork // die "fork: $!";
    if ($r{pid} == 0) {
        open STDOUT, '>', $r{out} or _exit(120);
        open STDERR, '>', $r{err} or _exit(121);
        exec @cmd or _exit(122);
    }
    return \%r;
}


sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    return scalar <$fh>;
}


sub finish {
    my ($r) = @_;
    waitpid $r->{pid}, 0;
    return ($? >> 8, slurp($r->{out}), slurp($r->{err}));
}


sub migrate {
    my ($db, $script) = @_;
    return finish(spawn($script // $MIGRATE, conninfo($db)));
}


# a copy of sql/ (migrate and the real files) plus extra files, for the
# cases that need migrations beyond the real ones

sub sql_copy_with {
    my (%extra) = @_;
    my $dir = tempdir('sqlcopy-XXXXXX', DIR => $TMP);

    for my $f ((glob "$SQL_DIR/[0-9][0-9][0-9]_*.sql"), $MIGRATE) {
        copy($f, $dir) or die "copy $f: $!";
    }
    chmod 0755, "$dir/migrate";

    for my $name (keys %extra) {
        open my $fh, '>', "$dir/$name" or die "$dir/$name: $!";
        print $fh $extra{$name};
        close $fh;
    }
    return "$dir/migrate";
}


my @FILES = map { m{/(\d{3})_([^/]*)\.sql$} ? [0 + $1, "$1_$2"] : () }
            sort glob "$SQL_DIR/[0-9][0-9][0-9]_*.sql";
my $LATEST = $FILES[-1][0];

my @TABLES = qw(users chat_sessions chat_participants chat_messages);


sub versions {
    my ($dbh) = @_;
    return $dbh->selectcol_arrayref(
        'SELECT version FROM collab_schema_migrations ORDER BY version');
}


sub schema_fingerprint {
    my ($dbh) = @_;
    return join ',', @{ $dbh->selectcol_arrayref(
        "SELECT c.relname || ':' || c.relkind::text FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' ORDER BY 1") };
}


# --- the statements of sql/README.md -------------------------------------

sub readme_statements {
    my $text = slurp("$SQL_DIR/README.md");
    my %st;
    while ($text =~ /```sql\n-- statement: (\w+)\n(.*?)```/sg) {
        $st{$1} = $2;
    }
    return \%st;
}

my $ST = readme_statements();


sub is_dup_race {
    my ($dbh) = @_;
    return ($dbh->state // '') eq '23505'
           && ($dbh->errstr // '') =~ /chat_messages_client_msg_id_key/;
}


# one call of a statement the way the C code is told to make it: on a
# duplicate-key race (23505 on chat_messages_client_msg_id_key) send it
# once more

my $RETRIES = 0;

sub run_st {
    my ($dbh, $name, @args) = @_;
    my $rows = eval { $dbh->selectall_arrayref($ST->{$name}, { Slice => {} },
                                               @args) };
    return $rows if $rows;
    die $@ unless is_dup_race($dbh);
    $RETRIES++;
    return $dbh->selectall_arrayref($ST->{$name}, { Slice => {} }, @args);
}


# fork $n children, each running $code->($dbh, $i) on its own connection
# and returning a list of lines; reap_children() collects them per child

sub spawn_children {
    my ($db, $n, $code) = @_;
    my @kids;

    for my $i (1 .. $n) {
        my $file = "$TMP/kid." . ++$DB_SEQ;
        my $pid = fork // die "fork: $!";
        if ($pid == 0) {
            my $ok = eval {
                my $dbh = connect_db($db);
                my @lines = $code->($dbh, $i);
                open my $fh, '>', $file or die "$file: $!";
                print $fh map { "$_\n" } @lines;
                close $fh or die "$file: $!";
                $dbh->disconnect;
                1;
            };
            print STDERR "child $i: $@" unless $ok;
            _exit($ok ? 0 : 1);
        }
        push @kids, [$pid, $file];
    }
    return \@kids;
}


sub reap_children {
    my ($kids) = @_;
    my @out;
    my $failed = 0;

    for my $k (@$kids) {
        waitpid $k->[0], 0;
        $failed++ if $?;
        push @out, [split /\n/, slurp($k->[1])];
    }
    is($failed, 0, 'all ' . @$kids . ' children succeeded');
    return @out;
}


sub in_children {
    return reap_children(spawn_children(@_));
}


# wait (bounded, never asserted as a duration) until $cond->() is true

sub wait_for {
    my ($what, $cond) = @_;
    for (1 .. 600) {
        return 1 if $cond->();
        select undef, undef, undef, 0.05;
    }
    diag("gave up waiting for $what");
    return 0;
}


# ==========================================================================

$PG = pg_server();


subtest 'migrate --version and usage' => sub {
    my ($rc, $out) = finish(spawn($MIGRATE, '--version'));
    is($rc, 0, '--version exits 0');
    is($out, "$LATEST\n", "--version prints the latest file version");

    ($rc, undef, my $err) = finish(spawn($MIGRATE, 'a', 'b'));
    is($rc, 2, 'two arguments: usage error');
    like($err, qr/usage:/, 'usage printed');
};


subtest 'fresh database: everything applied, then nothing' => sub {
    my $db = fresh_db();
    my ($rc, $out, $err) = migrate($db);

    is($rc, 0, 'first run exits 0') or diag($err);
    for my $f (@FILES) {
        like($out, qr/applied migration \Q$f->[1]\E \(version $f->[0]\)/,
             "says it applied $f->[1]");
    }
    like($out, qr/schema is now at version $LATEST/, 'says the version');

    my $dbh = connect_db($db);
    is_deeply(versions($dbh), [map { $_->[0] } @FILES],
              'every file is recorded');
    for my $t (@TABLES) {
        ok($dbh->selectrow_array('SELECT to_regclass(?)', undef, $t),
           "table $t exists");
    }

    my $before = $dbh->selectall_arrayref(
        'SELECT * FROM collab_schema_migrations ORDER BY version');
    my $fp = schema_fingerprint($dbh);

    ($rc, $out, $err) = migrate($db);
    is($rc, 0, 'second run exits 0') or diag($err);
    unlike($out, qr/applied migration/, 'second run applies nothing');
    like($out, qr/up to date at version $LATEST; nothing to apply/,
         'second run says so');
    is_deeply($dbh->selectall_arrayref(
                  'SELECT * FROM collab_schema_migrations ORDER BY version'),
              $before, 'records unchanged');
    is(schema_fingerprint($dbh), $fp, 'schema unchanged');

    $dbh->disconnect;
};


subtest 'database newer than the files: exit 3, nothing changed' => sub {
    my $db = fresh_db();
    is((migrate($db))[0], 0, 'migrated');

    my $dbh = connect_db($db);
    my $newer = $LATEST + 1;
    $dbh->do(q{INSERT INTO collab_schema_migrations (version, name)
               VALUES (?, 'from_the_future')}, undef, $newer);
    my $rows = $dbh->selectall_arrayref(
        'SELECT * FROM collab_schema_migrations ORDER BY version');
    my $fp = schema_fingerprint($dbh);

    my ($rc, $out, $err) = migrate($db);
    is($rc, 3, 'exit 3');
    like($err, qr/\Qdatabase schema version $newer is newer than this\E
                  \Q ngx_collab ($LATEST): refusing to migrate\E/x,
         'clear message');
    unlike($out, qr/applied migration/, 'nothing applied');
    is_deeply($dbh->selectall_arrayref(
                  'SELECT * FROM collab_schema_migrations ORDER BY version'),
              $rows, 'records unchanged');
    is(schema_fingerprint($dbh), $fp, 'schema unchanged');

    # an ahead database is refused even when older files are missing in it
    my $db2 = fresh_db();
    my $dbh2 = connect_db($db2);
    $dbh2->do('CREATE TABLE collab_schema_migrations (version integer
               PRIMARY KEY, name text NOT NULL, applied_at timestamptz
               NOT NULL DEFAULT now())');
    $dbh2->do(q{INSERT INTO collab_schema_migrations VALUES (?, 'x')},
              undef, $newer);
    ($rc) = migrate($db2);
    is($rc, 3, 'exit 3 before applying anything');
    ok(!$dbh2->selectrow_array(q{SELECT to_regclass('users')}),
       'no table created');

    $dbh->disconnect;
    $dbh2->disconnect;
};


subtest 'a failing migration is rolled back with its record' => sub {
    my $next = sprintf '%03d', $LATEST + 1;
    my $script = sql_copy_with(
        "${next}_broken.sql" => "CREATE TABLE t010_half_done (a int);\n"
                                . "SELECT 1 / 0;\n");
    my $db = fresh_db();

    my ($rc, $out, $err) = migrate($db, $script);
    is($rc, 1, 'exit 1');
    like($err, qr/division by zero/, 'the SQL error is shown');
    like($err, qr/rolled back/, 'says the failing one was rolled back');

    my $dbh = connect_db($db);
    is_deeply(versions($dbh), [map { $_->[0] } @FILES],
              'the good files are recorded, the broken one is not');
    ok(!$dbh->selectrow_array(q{SELECT to_regclass('t010_half_done')}),
       'nothing of the broken file remains');

    $script = sql_copy_with("${next}_bad.sql" => "BEGIN;\nSELECT 1;\n");
    ($rc, undef, $err) = migrate($db, $script);
    is($rc, 1, 'a file with its own BEGIN is refused');
    like($err, qr/transaction control/, 'and the reason is given');

    $dbh->disconnect;
};


subtest 'concurrent runs: one applies, the other waits and applies nothing'
=> sub {
    my $db = fresh_db();
    my $lock = connect_db($db);

    # hold the migration lock so both runs are certainly waiting at once
    $lock->do('SELECT pg_advisory_lock(108724402430306)');

    my @runs = map { spawn($MIGRATE, conninfo($db)) } 1 .. 2;

    ok(wait_for('two waiting migrate runs', sub {
           $lock->selectrow_array(
               q{SELECT count(*) FROM pg_locks l
                 JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND NOT l.granted
                   AND a.application_name = 'collab-migrate'}) == 2 }),
       'both runs wait for the lock');

    $lock->do('SELECT pg_advisory_unlock(108724402430306)');

    my @res = map { [finish($_)] } @runs;
    is_deeply([map { $_->[0] } @res], [0, 0], 'both exit 0')
        or diag(map { $_->[2] } @res);

    my @appliers = grep { $_->[1] =~ /applied migration/ } @res;
    my @idle = grep { $_->[1] =~ /nothing to apply/ } @res;
    is(scalar @appliers, 1, 'exactly one run applied the migrations');
    is(scalar @idle, 1, 'the other applied nothing');
    like($_->[1], qr/another migration is running; waiting/, 'said it waited')
        for @res;

    is_deeply(versions($lock), [map { $_->[0] } @FILES], 'all recorded once');
    $lock->disconnect;
};


# one migrated database for the constraints and the statements
my $DB = fresh_db();
is((migrate($DB))[0], 0, 'migrated the database for the statements');
my $dbh = connect_db($DB);


sub fails_with {
    my ($state, $sql, @args) = @_;
    my $ok = eval { $dbh->do($sql, undef, @args); 1 };
    return !$ok && $dbh->state eq $state;
}


subtest 'constraints reject bad rows' => sub {
    my $u = $dbh->selectrow_array(q{INSERT INTO users (external_id)
                                    VALUES ('alice') RETURNING id});
    my $s = $dbh->selectrow_array(q{INSERT INTO chat_sessions (title, type,
                                    owner_id) VALUES ('t', 'text', ?)
                                    RETURNING id}, undef, $u);
    my $ins_session = 'INSERT INTO chat_sessions (title, type, owner_id,'
                      . ' slug, max_participants)'
                      . q{ VALUES (?, ?, ?, coalesce(?, 'ok_slug-1'), ?)};

    ok(fails_with('23505', q{INSERT INTO users (external_id)
                             VALUES ('alice')}), 'duplicate external_id');
    ok(fails_with('23514', $ins_session, 't', 'video', $u, undef, undef),
       'bad session type');
    ok(fails_with('23514', $ins_session, '', 'text', $u, undef, undef),
       'empty title');
    ok(fails_with('23514', $ins_session, 'x' x 201, 'text', $u, undef,
                  undef), 'title too long');
    ok(fails_with('23514', $ins_session, 't', 'text', $u, 'a/b', undef),
       'slug with a non URL-safe character');
    ok(fails_with('23514', $ins_session, 't', 'text', $u, undef, 0),
       'max_participants 0');
    ok(fails_with('23503', $ins_session, 't', 'text', -1, undef, undef),
       'unknown owner');
    ok(fails_with('23514', q{INSERT INTO chat_participants (session_id,
                             user_id, role) VALUES (?, ?, 'admin')},
                  $s, $u), 'bad role');

    my $msg = 'INSERT INTO chat_messages (session_id, seq, user_id, kind,'
              . ' body, client_msg_id) VALUES (?, ?, ?, ?, ?, ?)';
    $dbh->do($msg, undef, $s, 1, $u, 'user', 'hi', 'c1');
    ok(fails_with('23505', $msg, $s, 2, $u, 'user', 'again', 'c1'),
       'duplicate (session, user, client_msg_id)');
    ok(fails_with('23505', $msg, $s, 1, $u, 'user', 'x', 'c2'),
       'duplicate (session, seq)');
    ok(fails_with('23514', $msg, $s, 3, $u, 'shout', 'x', undef), 'bad kind');
    ok(fails_with('23514', $msg, $s, 3, undef, 'user', 'x', undef),
       'user message without a user');
    ok(fails_with('23514', $msg, $s, 0, $u, 'user', 'x', undef), 'seq 0');
    ok(fails_with('23502', $msg, $s, 3, $u, 'user', undef, undef),
       'NULL body');

    ok(eval { $dbh->do($msg, undef, $s, 3, undef, 'ai', 'a', undef);
              $dbh->do($msg, undef, $s, 4, undef, 'ai', 'b', undef);
              $dbh->do($msg, undef, $s, 5, $u, 'user', 'c', undef);
              $dbh->do($msg, undef, $s, 6, $u, 'user', 'd', undef); 1 },
       'NULL user / client_msg_id never collide') or diag($@);

    is($dbh->selectrow_array('SELECT count(*) FROM chat_messages
                              WHERE session_id = ?', undef, $s), 5,
       'only the good rows are stored');

    ok(fails_with('23503', 'DELETE FROM users WHERE id = ?', $u),
       'a user who owns a session cannot be deleted');
    $dbh->do('DELETE FROM chat_sessions WHERE id = ?', undef, $s);
    is($dbh->selectrow_array('SELECT count(*) FROM chat_messages
                              WHERE session_id = ?', undef, $s), 0,
       'deleting a session deletes its messages');
};


subtest 'README statements exist' => sub {
    for my $name (qw(upsert_user create_session append_one append_batch
                     messages_since history_before my_sessions
                     latest_image))
    {
        ok($ST->{$name}, "statement $name");
    }
};


my ($bob, $carol);

subtest 'upsert_user' => sub {
    $bob = run_st($dbh, 'upsert_user', 'bob', 'Bob')->[0]{id};
    ok($bob, 'new user gets an id');

    my $xmin = $dbh->selectrow_array(
        'SELECT xmin::text FROM users WHERE id = ?', undef, $bob);
    my $rows = run_st($dbh, 'upsert_user', 'bob', 'Bob');
    is_deeply($rows, [{ id => $bob }], 'same user: same id, one row');
    is($dbh->selectrow_array('SELECT xmin::text FROM users WHERE id = ?',
                             undef, $bob), $xmin,
       'unchanged name: nothing written');

    run_st($dbh, 'upsert_user', 'bob', undef);
    is($dbh->selectrow_array('SELECT display_name FROM users WHERE id = ?',
                             undef, $bob), 'Bob', 'NULL name keeps the name');

    is(run_st($dbh, 'upsert_user', 'bob', 'Robert')->[0]{id}, $bob,
       'renamed user keeps the id');
    is($dbh->selectrow_array('SELECT display_name FROM users WHERE id = ?',
                             undef, $bob), 'Robert', 'name updated');

    $carol = run_st($dbh, 'upsert_user', 'carol', undef)->[0]{id};
    isnt($carol, $bob, 'another user, another id');

    # the first connections of one user racing
    my @out = in_children($DB, 6, sub {
        my ($h) = @_;
        return run_st($h, 'upsert_user', 'racer', 'R')->[0]{id};
    });
    my %ids = map { $_->[0] => 1 } @out;
    is(scalar keys %ids, 1, 'racing first upserts agree on one id');
    is($dbh->selectrow_array(q{SELECT count(*) FROM users
                               WHERE external_id = 'racer'}), 1, 'one row');
};


my (%sess);

subtest 'create_session' => sub {
    for my $name (qw(a b c)) {
        my $r = run_st($dbh, 'create_session', "room $name", 'text', $bob,
                       undef, 0);
        is(scalar @$r, 1, "session $name created");
        $sess{$name} = $r->[0];
        like($r->[0]{slug}, qr/^[A-Za-z0-9_-]{22}$/, 'URL-safe slug');
        is($r->[0]{last_seq}, 0, 'last_seq 0');
    }
    isnt($sess{a}{slug}, $sess{b}{slug}, 'slugs differ');

    is_deeply($dbh->selectall_arrayref(
                  'SELECT user_id, role FROM chat_participants
                   WHERE session_id = ?', undef, $sess{a}{id}),
              [[$bob, 'owner']], 'owner is the one participant');

    my $n = $dbh->selectrow_array('SELECT count(*) FROM chat_sessions');
    ok(!eval { run_st($dbh, 'create_session', 'x', 'movie', $bob, undef, 1) }
       && $dbh->state eq '23514', 'bad type refused');
    is($dbh->selectrow_array('SELECT count(*) FROM chat_sessions'), $n,
       'and nothing stored');
    is($dbh->selectrow_array('SELECT count(*) FROM chat_participants'), 3,
       'no orphan participant');

    my $r = run_st($dbh, 'create_session', 'img', 'image-to-image', $carol,
                   5, 1);
    is($r->[0]{max_participants}, 5, 'max participants stored');
    ok($r->[0]{is_public}, 'public');
};


subtest 'append_one: seqs and resends' => sub {
    my $s = $sess{a}{id};

    my $r1 = run_st($dbh, 'append_one', $s, $bob, 'user', 'one', 'm1', undef);
    my $r2 = run_st($dbh, 'append_one', $s, $bob, 'user', 'two', 'm2',
                    '{"k":1}');
    is_deeply([map { [$_->[0]{seq}, $_->[0]{created}] } $r1, $r2],
              [[1, 1], [2, 1]], 'seqs 1 and 2, both created');

    my $again = run_st($dbh, 'append_one', $s, $bob, 'user', 'one?', 'm1',
                       undef);
    is_deeply($again, [{ %{ $r1->[0] }, created => 0 }],
              'resend: original seq and created_at, created false');

    my $ai = run_st($dbh, 'append_one', $s, undef, 'ai', 'beep', undef, undef);
    is($ai->[0]{seq}, 3, 'ai message without user: seq 3');

    my $other = run_st($dbh, 'append_one', $s, $carol, 'user', 'c', 'm1',
                       undef);
    is($other->[0]{seq}, 4, 'same client_msg_id from another user is new');

    is($dbh->selectrow_array('SELECT last_seq FROM chat_sessions
                              WHERE id = ?', undef, $s), 4,
       'resend consumed no seq');
    is($dbh->selectrow_array(q{SELECT body FROM chat_messages
                               WHERE session_id = ? AND seq = 1},
                             undef, $s), 'one', 'resend changed nothing');

    is_deeply(run_st($dbh, 'append_one', -1, $bob, 'user', 'x', 'zz', undef),
              [], 'unknown session: no row');
    ok(!eval { run_st($dbh, 'append_one', $s, $bob, 'bogus', 'x', 'm9',
                      undef) } && $dbh->state eq '23514', 'bad kind refused');
    is($dbh->selectrow_array('SELECT last_seq FROM chat_sessions
                              WHERE id = ?', undef, $s), 4,
       'a refused append consumed no seq');
};


subtest 'append_batch' => sub {
    my $s = $sess{a}{id};

    # m2 is already stored (seq 2); b1 appears twice; one ai message
    my $r = run_st($dbh, 'append_batch', $s,
                   [$bob, $bob, $bob, undef, $bob],
                   ['user', 'user', 'user', 'ai', 'user'],
                   ['b one', 'm2 again', "b \"two\"\\", 'ai', 'b one again'],
                   ['b1', 'm2', 'b2', undef, 'b1'],
                   ['{"x":[1,"y"]}', undef, undef, undef, undef]);

    is_deeply([map { [$_->{ord}, $_->{seq}, $_->{created}] } @$r],
              [[1, 5, 1], [2, 2, 0], [3, 6, 1], [4, 7, 1], [5, 5, 0]],
              'new ones get 5, 6, 7 in order; resends their original seq');
    is($r->[4]{created_at}, $r->[0]{created_at}, 'in-batch repeat: same row');
    is($dbh->selectrow_array('SELECT last_seq FROM chat_sessions
                              WHERE id = ?', undef, $s), 7,
       'last_seq bumped by the new ones only');
    is($dbh->selectrow_array(q{SELECT body FROM chat_messages
                               WHERE session_id = ? AND seq = 6},
                             undef, $s), "b \"two\"\\",
       'quotes and backslashes survive the array literal');
    is($dbh->selectrow_array(q{SELECT metadata->'x'->>1 FROM chat_messages
                               WHERE session_id = ? AND seq = 5},
                             undef, $s), 'y', 'metadata stored as jsonb');

    my $all = run_st($dbh, 'append_batch', $s, [$bob, $bob], ['user', 'user'],
                     ['x', 'y'], ['b1', 'b2'], [undef, undef]);
    is_deeply([map { [$_->{seq}, $_->{created}] } @$all], [[5, 0], [6, 0]],
              'a batch of resends only creates nothing');
    is($dbh->selectrow_array('SELECT last_seq FROM chat_sessions
                              WHERE id = ?', undef, $s), 7,
       'and consumes no seq');

    is_deeply(run_st($dbh, 'append_batch', -1, [$bob], ['user'], ['x'],
                     ['q'], [undef]), [], 'unknown session: no rows');
};


subtest 'messages_since, history_before, my_sessions' => sub {
    my $s = $sess{a}{id};

    my @seen;
    my $since = 0;
    for (1 .. 10) {
        my $page = run_st($dbh, 'messages_since', $s, $since, 3 + 1);
        my $more = @$page > 3;
        pop @$page if $more;
        push @seen, map { $_->{seq} } @$page;
        $since = $page->[-1]{seq} if @$page;
        last unless $more;
    }
    is_deeply(\@seen, [1 .. 7], 'paging since 0 by 3 yields 1..7 once');

    my $since5 = run_st($dbh, 'messages_since', $s, 5, 100);
    is_deeply([map { $_->{seq} } @$since5], [6, 7], 'since 5: 6, 7');
    is($since5->[0]{user_external_id}, 'bob', 'author external id');

    my $h = run_st($dbh, 'history_before', $s, 6, 2 + 1);
    is_deeply([map { $_->{seq} } @$h], [3, 4, 5],
              'before 6, limit 2 (+1): oldest first, extra first');
    $h = run_st($dbh, 'history_before', $s, undef, 3);
    is_deeply([map { $_->{seq} } @$h], [5, 6, 7], 'no before: the newest');
    $h = run_st($dbh, 'history_before', $s, 2, 10);
    is_deeply([map { $_->{seq} } @$h], [1], 'before 2: just 1');

    # activity: a was active 1 h ago, b 2 h ago, c 3 h ago; a message
    # to c makes it the most recent (last_activity moves when older than
    # a second, which these are)
    my $ago = 'UPDATE chat_sessions SET last_activity = now() - ?::interval'
              . ' WHERE id = ?';
    $dbh->do($ago, undef, '1 hour', $sess{a}{id});
    $dbh->do($ago, undef, '2 hours', $sess{b}{id});
    $dbh->do($ago, undef, '3 hours', $sess{c}{id});
    run_st($dbh, 'append_one', $sess{c}{id}, $bob, 'user', 'hi', 'c1', undef);
    ok($dbh->selectrow_array(q{SELECT last_activity > now() - interval '1 min'
                               FROM chat_sessions WHERE id = ?},
                             undef, $sess{c}{id}),
       'an append moves an old last_activity to now');
    my $mine = run_st($dbh, 'my_sessions', $bob, 10);
    is_deeply([map { $_->{slug} } @$mine],
              [$sess{c}{slug}, $sess{a}{slug}, $sess{b}{slug}],
              'most recent activity first');
    is($mine->[0]{role}, 'owner', 'role returned');
    is_deeply([map { $_->{slug} } @{ run_st($dbh, 'my_sessions', $bob, 1) }],
              [$sess{c}{slug}], 'limit');
    is_deeply(run_st($dbh, 'my_sessions', -1, 10), [], 'nobody: nothing');
};


subtest 'latest_image: the newest picture up to a seq, by its index' => sub {
    my $r = run_st($dbh, 'create_session', 'pictures', 'image-to-image',
                   $bob, undef, 0);
    my $s = $r->[0]{id};

    # 3,000 messages, pictures at 100 and 2,500 only
    $dbh->do(q{INSERT INTO chat_messages (session_id, seq, user_id, kind,
                                         body, metadata)
               SELECT ?, g, ?, 'user', 'm' || g,
                      CASE WHEN g IN (100, 2500)
                           THEN jsonb_build_object('image',
                                    'data:image/png;base64,AA' || g)
                      END
               FROM generate_series(1, 3000) g}, undef, $s, $bob);
    $dbh->do('UPDATE chat_sessions SET last_seq = 3000 WHERE id = ?',
             undef, $s);

    my $pic = sub { [map { $_->{seq} } @{ run_st($dbh, 'latest_image',
                                                 $s, $_[0]) }] };
    is_deeply($pic->(3000), [2500], 'up to 3000: the one at 2500');
    is_deeply($pic->(2500), [2500], 'up to 2500: itself');
    is_deeply($pic->(2499), [100], 'up to 2499: the one at 100');
    is_deeply($pic->(99), [], 'up to 99: none');
    is(run_st($dbh, 'latest_image', $s, 3000)->[0]{image},
       'data:image/png;base64,AA2500', 'the picture itself');

    # as the module runs it: prepared, with the generic plan
    $dbh->do('ANALYZE chat_messages');
    $dbh->do('SET plan_cache_mode = force_generic_plan');
    $dbh->do("PREPARE li (bigint, bigint) AS $ST->{latest_image}");
    my $plan = join "\n", map { $_->[0] } @{ $dbh->selectall_arrayref(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE li($s, 2499)") };
    $dbh->do('DEALLOCATE li');
    $dbh->do('RESET plan_cache_mode');
    like($plan, qr/chat_messages_image_idx/,
         'the generic plan walks chat_messages_image_idx') or diag($plan);
    unlike($plan, qr/Rows Removed by Filter: [1-9]/,
           'and passes over none of the 2,398 messages without a picture'
           . ' in between') or diag($plan);
};


subtest 'concurrency: 8 writers x 200 appends to one session' => sub {
    my $s = run_st($dbh, 'create_session', 'busy', 'text', $bob, undef, 0)
            ->[0]{id};

    my @out = in_children($DB, 8, sub {
        my ($h, $i) = @_;
        map { run_st($h, 'append_one', $s, $bob, 'user', "k$i-$_", "k$i-$_",
                     undef)->[0]{seq} } 1 .. 200;
    });

    my @seqs = sort { $a <=> $b } map { @$_ } @out;
    is(scalar @seqs, 1600, '1600 acks');
    is_deeply(\@seqs, [1 .. 1600], 'acked seqs are exactly 1..1600');
    is_deeply($dbh->selectcol_arrayref('SELECT seq FROM chat_messages
                                        WHERE session_id = ? ORDER BY seq',
                                       undef, $s),
              [1 .. 1600], 'stored seqs are exactly 1..1600');
    is($dbh->selectrow_array('SELECT last_seq FROM chat_sessions
                              WHERE id = ?', undef, $s), 1600, 'last_seq');

    my $ordered = $dbh->selectrow_array(
        q{SELECT bool_and(ok) FROM (
            SELECT split_part(body, '-', 2)::int
                   > coalesce(lag(split_part(body, '-', 2)::int)
                      OVER (PARTITION BY split_part(body, '-', 1)
                            ORDER BY seq), 0) AS ok
            FROM chat_messages WHERE session_id = ?) t}, undef, $s);
    ok($ordered, "each writer's messages are in its sending order");
};


subtest 'concurrency: batches from 4 writers' => sub {
    my $s = run_st($dbh, 'create_session', 'batch', 'text', $bob, undef, 0)
            ->[0]{id};

    my @out = in_children($DB, 4, sub {
        my ($h, $i) = @_;
        my @seqs;
        for my $b (1 .. 40) {
            my @ids = map { "w$i-$b-$_" } 1 .. 5;
            my $r = run_st($h, 'append_batch', $s, [($bob) x 5],
                           [('user') x 5], \@ids, \@ids, [(undef) x 5]);
            push @seqs, map { $_->{seq} } @$r;
        }
        @seqs;
    });

    my @seqs = sort { $a <=> $b } map { @$_ } @out;
    is_deeply(\@seqs, [1 .. 800], 'seqs exactly 1..800');
    is($dbh->selectrow_array('SELECT last_seq FROM chat_sessions
                              WHERE id = ?', undef, $s), 800, 'last_seq');
};


subtest 'concurrency: the same client_msg_id sent at once consumes one seq'
=> sub {
    my $s = run_st($dbh, 'create_session', 'dups', 'text', $bob, undef, 0)
            ->[0]{id};
    my $n = 6;

    for my $round (1 .. 3) {
        my $st = $round == 2 ? 'append_batch' : 'append_one';

        # hold the session row so every sender is past its duplicate
        # lookup and queued on the row lock when it is released
        my $gate = connect_db($DB);
        $gate->begin_work;
        $gate->do('SELECT 1 FROM chat_sessions WHERE id = ? FOR UPDATE',
                  undef, $s);

        my $kids = spawn_children($DB, $n, sub {
            my ($h) = @_;
            my $r = $st eq 'append_one'
                ? run_st($h, 'append_one', $s, $bob, 'user', "d$round",
                         "dup$round", undef)
                : run_st($h, 'append_batch', $s, [$bob], ['user'],
                         ["d$round"], ["dup$round"], [undef]);
            return "$r->[0]{seq} $r->[0]{created} $RETRIES"
                   . " $r->[0]{created_at}";
        });

        # (asked on $dbh: inside the gate's transaction pg_stat_activity
        # would be one cached snapshot)
        ok(wait_for("$n senders waiting", sub {
               $dbh->selectrow_array(
                   q{SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database()
                       AND wait_event_type = 'Lock'}) >= $n }),
           "round $round ($st): all senders queued on the session row");

        $gate->commit;
        $gate->disconnect;

        my @lines = map { @$_ } reap_children($kids);
        is(scalar @lines, $n, 'every sender got an answer');
        my %seqs = map { (split / /, $_, 4)[0] => 1 } @lines;
        my %ats = map { (split / /, $_, 4)[3] => 1 } @lines;
        my $created = grep { (split / /)[1] } @lines;
        my $retried = grep { (split / /)[2] } @lines;
        is($created, 1, 'exactly one sender created the message');
        is($retried, $n - 1,
           'the others met the unique key (23505) and their retry found it');
        is_deeply([keys %seqs], [$round],
                  "all got the same original seq ($round)");
        is(scalar keys %ats, 1, 'and the same created_at');
    }

    is_deeply($dbh->selectcol_arrayref('SELECT seq FROM chat_messages
                                        WHERE session_id = ? ORDER BY seq',
                                       undef, $s),
              [1, 2, 3], 'one row per client_msg_id, seqs 1..3');
    is($dbh->selectrow_array('SELECT last_seq FROM chat_sessions
                              WHERE id = ?', undef, $s), 3,
       'no seq consumed by the duplicates');
};


$dbh->disconnect;

my $admin = connect_db($PG->{admin_db});
for my $db (@{ $admin->selectcol_arrayref(
                   q{SELECT datname FROM pg_database
                     WHERE datname LIKE ?}, undef, "collab_t010_${$}_%") })
{
    $admin->do("DROP DATABASE $db WITH (FORCE)");
}
$admin->disconnect;

done_testing();
