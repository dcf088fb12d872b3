//go:build unix

package main

import (
	"bufio"
	"context"
	"debug/elf"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// freePort returns a TCP port on the loopback that nothing listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// deployed runs `lmx start` as a deployment file configures it, with its
// variables env, its socket directory moved to a directory of the test's
// and its ports to free ones, and returns the broker, the socket's path
// and the environment it ran with.
func deployed(t *testing.T, env []string, args []string, runDir string, ports map[string]string) (*broker, string, []string) {
	t.Helper()
	dir := shortDir(t)
	for i, kv := range env {
		kv = strings.ReplaceAll(kv, runDir, dir)
		for from, to := range ports {
			kv = strings.ReplaceAll(kv, from, to)
		}
		env[i] = kv
	}
	env = baseEnv(env...)
	require.Equal(t, "start", args[1], "the command is %v", args)
	b := startBroker(t, env, args[2:]...)
	return b, filepath.Join(dir, "lmx.sock"), env
}

// TestSystemdUnit: contrib/lmx.service passes systemd-analyze verify, and
// lmx start as it configures it serves its socket to the group, TCP, and a
// /healthz that lmx healthcheck reads from the same variables.
func TestSystemdUnit(t *testing.T) {
	unit, err := os.ReadFile("../../contrib/lmx.service")
	require.NoError(t, err)
	var env []string
	var execStart []string
	for line := range strings.Lines(string(unit)) {
		line = strings.TrimSpace(line)
		if kv, ok := strings.CutPrefix(line, "Environment="); ok {
			env = append(env, kv)
		}
		if cmd, ok := strings.CutPrefix(line, "ExecStart="); ok {
			execStart = strings.Fields(cmd)
		}
	}
	require.Equal(t, []string{"/usr/local/bin/lmx", "start"}, execStart)
	assert.Contains(t, string(unit), "RuntimeDirectory=lmx\n", "systemd makes the socket's directory")

	t.Run("verify", func(t *testing.T) {
		analyze, err := exec.LookPath("systemd-analyze")
		if err != nil {
			t.Skip("systemd-analyze is not installed here, so the unit's syntax is not checked")
		}
		local := filepath.Join(t.TempDir(), "lmx.service")
		require.NoError(t, os.WriteFile(local, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/lmx", lmxBin)), 0o644))
		out, err := exec.Command(analyze, "verify", local).CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Empty(t, strings.TrimSpace(string(out)))
	})

	metrics := "127.0.0.1:" + freePort(t)
	b, sock, env := deployed(t, env, execStart, "/run/lmx", map[string]string{"127.0.0.1:6971": "127.0.0.1:0", "127.0.0.1:6972": metrics})
	require.Len(t, b.urls, 2, "the socket and TCP: %v", b.urls)
	assert.Equal(t, "unix://"+sock, b.urls[0])
	assert.True(t, strings.HasPrefix(b.urls[1], "tcp://127.0.0.1:"), b.urls[1])
	fi, err := os.Stat(sock)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o660), fi.Mode().Perm(), "the group lmx may connect")

	r := runLmxEnv(t, baseEnv("LMX_ADDR="+sock), "ping") // as the unit's comment tells clients
	require.Equal(t, 0, r.code, r.stderr)
	r = runLmxEnv(t, env, "healthcheck")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "healthy: http://"+metrics+"/healthz")

	b.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, b.wait(t))
	r = runLmxEnv(t, env, "healthcheck")
	assert.Equal(t, 1, r.code, "a stopped broker is unhealthy, to Docker exit code 1: %s", r.stderr)
}

// dockerfile is what TestDockerfile reads of the Dockerfile.
type dockerfile struct {
	from        []string // every stage's image
	env         []string // the final stage's ENV, as K=V
	user        string
	volumes     []string
	healthcheck string
	entrypoint  string
	cmd         string
	build       string // the RUN that builds lmx
}

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	f, err := os.Open("../../Dockerfile")
	require.NoError(t, err)
	defer f.Close()
	var d dockerfile
	sc := bufio.NewScanner(f)
	var line string
	for sc.Scan() {
		text := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(text, "#") || text == "" && line == "" {
			continue
		}
		if more, ok := strings.CutSuffix(text, `\`); ok {
			line += more + " "
			continue
		}
		line += text
		instr, rest, _ := strings.Cut(line, " ")
		line = ""
		switch instr {
		case "FROM":
			d.from = append(d.from, strings.Fields(rest)[0])
			d.env = nil
		case "ENV":
			d.env = append(d.env, strings.Fields(rest)...)
		case "USER":
			d.user = rest
		case "VOLUME":
			d.volumes = append(d.volumes, strings.Fields(rest)...)
		case "HEALTHCHECK":
			d.healthcheck = rest
		case "ENTRYPOINT":
			d.entrypoint = rest
		case "CMD":
			d.cmd = rest
		case "RUN":
			if strings.Contains(rest, "go build") {
				d.build = rest
			}
		}
	}
	require.NoError(t, sc.Err())
	return d
}

// TestDockerfile: the image is a static binary in an empty image, run as a
// user that is not root, with a volume for the socket and a HEALTHCHECK of
// /healthz; lmx start, configured by its ENV as in the container, serves.
func TestDockerfile(t *testing.T) {
	d := readDockerfile(t)
	require.Len(t, d.from, 2)
	assert.Equal(t, "scratch", d.from[1], "the final image has nothing but lmx")
	assert.Contains(t, d.build, "CGO_ENABLED=0", "a static binary, which scratch needs")
	uid, _, _ := strings.Cut(d.user, ":")
	n, err := strconv.Atoi(uid)
	require.NoError(t, err, "USER %q: a numeric uid, which an empty image can run as", d.user)
	assert.NotZero(t, n, "not root")
	assert.Equal(t, []string{"/run/lmx"}, d.volumes)
	assert.Contains(t, d.healthcheck, `CMD ["/usr/local/bin/lmx", "healthcheck"]`)
	assert.Equal(t, `["/usr/local/bin/lmx"]`, d.entrypoint)
	assert.Equal(t, `["start"]`, d.cmd)

	// The build step, run here as the builder stage runs it, makes a static
	// binary: no ELF interpreter, which an empty image would lack.
	out := t.TempDir()
	build := exec.Command("sh", "-c", strings.ReplaceAll(d.build, "/out/", out+"/"))
	build.Dir = repoRoot
	msg, err := build.CombinedOutput()
	require.NoError(t, err, "RUN %s:\n%s", d.build, msg)
	bin, err := elf.Open(filepath.Join(out, "usr/local/bin/lmx"))
	require.NoError(t, err)
	defer bin.Close()
	for _, p := range bin.Progs {
		assert.NotEqual(t, elf.PT_INTERP, p.Type, "the binary is linked dynamically")
	}

	metricsPort := freePort(t)
	b, sock, env := deployed(t, d.env, []string{"lmx", "start"}, "/run/lmx",
		map[string]string{"0.0.0.0:6971": "127.0.0.1:0", "0.0.0.0:6972": "0.0.0.0:" + metricsPort})
	assert.Equal(t, "unix://"+sock, b.addr)
	// In the container, XDG_RUNTIME_DIR makes the socket every client's
	// default, and the HEALTHCHECK needs no flag.
	r := runLmxEnv(t, env, "ping")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "unix://"+sock)
	r = runLmxEnv(t, env, "healthcheck")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "http://127.0.0.1:"+metricsPort+"/healthz")
}

// TestDockerBuild builds the image and runs lmx version in it, where a
// Docker engine runs.
func TestDockerBuild(t *testing.T) {
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Skip("no docker command here, so the image is not built")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, docker, "info").CombinedOutput(); err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Skipf("no Docker engine answers here, so the image is not built: %s", lines[len(lines)-1])
	}
	tag := "lmx-test:" + strconv.Itoa(os.Getpid())
	out, err := exec.CommandContext(ctx, docker, "build", "-t", tag, "../..").CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { exec.Command(docker, "rmi", "-f", tag).Run() })
	out, err = exec.CommandContext(ctx, docker, "run", "--rm", tag, "version").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "lmx ")
	out, err = exec.CommandContext(ctx, docker, "run", "--rm", "--entrypoint", "/usr/local/bin/lmx", tag, "version", "--json").CombinedOutput()
	require.NoError(t, err, "%s", out)
	out, err = exec.CommandContext(ctx, docker, "image", "inspect", "--format", "{{.Config.User}}", tag).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, "65532:65532", strings.TrimSpace(string(out)))
}
