# docker/ without a Docker engine (none runs on these machines): the
# compose file must pass Debian's `docker-compose config`, and the image
# must build the module with the very `make build` that CI tests, from
# packages the Makefile's `deps` list also names, so the two cannot drift.
# Nothing here builds or runs an image.

use strict;
use warnings;

use Test::More;
use Collab::Test;

my $repo = Collab::Test->repo;
my $compose = "$repo/docker/compose.yaml";
my $dockerfile = "$repo/docker/Dockerfile";

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or die "$path: $!";
    local $/;
    return scalar <$fh>;
}

# --- compose ----------------------------------------------------------------

my $out = qx{docker-compose -f '$compose' config 2>&1};
is($?, 0, 'docker-compose config accepts docker/compose.yaml')
    or diag($out);

for my $svc (qw(postgres redis migrate nginx)) {
    like($out, qr/^  \Q$svc\E:$/m, "compose has service $svc");
}
like($out, qr/image: postgres:15\b/, 'PostgreSQL 15');
like($out, qr/image: redis:7\b/, 'Redis 7');
like($out, qr{/opt/ngx_collab/sql/migrate}, 'migrate runs sql/migrate');
like($out, qr/condition: service_completed_successfully/,
     'nginx waits for the migrations');
is(() = $out =~ /^    healthcheck:$/mg, 3,
   'postgres, redis and nginx have healthchecks');

# --- Dockerfile -------------------------------------------------------------

my $df = slurp($dockerfile);
$df =~ s/\\\n/ /g;                      # join continuation lines

my @stages = split /^FROM\s+/m, $df;
shift @stages;                          # text before the first FROM
is(scalar @stages, 2, 'two stages: build and runtime');
like($stages[0], qr/^debian:12 AS build\b/, 'build stage is Debian 12');
like($stages[1], qr/^debian:12\b/, 'runtime stage is Debian 12');

my @build_runs = $stages[0] =~ /^RUN\s+(.*)$/mg;
is_deeply([grep { /(?:^|&&|;)\s*make\b/ } @build_runs], ['make build'],
          'the build stage builds with exactly `make build`');

my ($apt) = $stages[0] =~ /apt-get install\s+(.*?)(?:&&|$)/m;
my @image_pkgs = grep { !/^-/ } split ' ', $apt // '';
ok(@image_pkgs > 5, 'build stage installs packages');

my $mk = slurp("$repo/Makefile");
$mk =~ s/\\\n/ /g;
my ($deps) = $mk =~ /^DEB_PACKAGES\s*:=\s*(.*)$/m;
my %deps = map { $_ => 1 } split ' ', $deps // '';
my @missing = grep { !$deps{$_} } @image_pkgs;
is_deeply(\@missing, [], 'the image installs only packages `make deps` has');

like($stages[1], qr{COPY\s+--from=build\s+/src/build/ngx_collab_module\.so
                    \s+/usr/lib/nginx/modules/}x,
     'runtime stage takes the module from make build');
like($stages[1], qr{\bconf/collab\.conf\b|/etc/nginx/collab/collab\.conf},
     'runtime stage uses conf/collab.conf');

done_testing;
