//go:build unix

package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// repoRoot is the repository's top, where the library module is.
const repoRoot = "../.."

// releaseVersion is the version the modules require of each other, and the
// one this test publishes them at.
const releaseVersion = "v0.1.0"

// goCmd runs go with args in dir, its environment extended by env, and
// returns its output.
func goCmd(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go %s in %s:\n%s", strings.Join(args, " "), dir, out)
	return string(out)
}

// TestLibraryModuleGraph pins what `go get github.com/lmx-go/lmx` brings
// into a user's build: the library's own few modules, never the CLI's, the
// metrics' or a backend's.
func TestLibraryModuleGraph(t *testing.T) {
	out := goCmd(t, repoRoot, []string{"GOWORK=off", "GOFLAGS=-mod=readonly"}, "mod", "graph")
	var mods []string
	for line := range strings.Lines(out) {
		for _, f := range strings.Fields(line) {
			path, _, _ := strings.Cut(f, "@")
			if path != "go" && path != "toolchain" && !slices.Contains(mods, path) {
				mods = append(mods, path)
			}
		}
	}
	slices.Sort(mods)
	assert.Equal(t, []string{
		"github.com/lmx-go/lmx",
		"github.com/oklog/ulid/v2",
		"github.com/pborman/getopt", // ulid's, for its own command; never built
		"github.com/stretchr/objx",  // testify's, for tests only
		"github.com/stretchr/testify",
		"go.yaml.in/yaml/v3",
	}, mods, "go mod graph:\n%s", out)
}

// TestInstallFromProxy publishes this tree's modules at releaseVersion on a
// module proxy in a directory, in front of the real one, and installs from
// it as a user outside the repository would: `go get` of the library and of
// the etcd backend into a module of their own, and `go install` of the CLI,
// which then names its version. It proves the go.mod files need no replace
// directives and their go.sum files are whole.
func TestInstallFromProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds lmx from a module proxy; skipped with -short")
	}
	proxy := t.TempDir()
	for _, dir := range []string{".", "cmd/lmx", "etcd", "metrics"} {
		publish(t, proxy, filepath.Join(repoRoot, dir))
	}
	env := []string{
		"GOWORK=off",
		"GOFLAGS=-mod=mod -trimpath", // and CGO_ENABLED=0, as the Dockerfile builds: they share the build cache
		"CGO_ENABLED=0",
		"GOTOOLCHAIN=local",
		"GOPROXY=file://" + proxy + "," + strings.TrimSpace(goCmd(t, ".", nil, "env", "GOPROXY")),
		"GONOSUMDB=github.com/lmx-go/lmx", // not in the checksum database: published only here
		"GOBIN=" + t.TempDir(),
	}

	user := t.TempDir()
	goCmd(t, user, env, "mod", "init", "example.com/user")
	require.NoError(t, os.WriteFile(filepath.Join(user, "main.go"), []byte(`package main

import (
	"github.com/lmx-go/lmx"
	_ "github.com/lmx-go/lmx/etcd"
)

func main() { lmx.NewBroker().Close() }
`), 0o644))
	goCmd(t, user, env, "get", "github.com/lmx-go/lmx@"+releaseVersion, "github.com/lmx-go/lmx/etcd@"+releaseVersion)
	goCmd(t, user, env, "list", "-deps", ".")

	goCmd(t, user, env, "install", "github.com/lmx-go/lmx/cmd/lmx@"+releaseVersion)
	var bin string
	for _, kv := range env {
		if dir, ok := strings.CutPrefix(kv, "GOBIN="); ok {
			bin = filepath.Join(dir, "lmx")
		}
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "lmx "+releaseVersion, "lmx version says which release it is")
	assert.Contains(t, string(out), "github.com/lmx-go/lmx "+releaseVersion, "and which library it is built with")
}

// publish puts the module in dir on the proxy at releaseVersion: its go.mod,
// and a zip of its files as git sees them (tracked or new, not ignored),
// without the modules nested in it.
func publish(t *testing.T, proxy, dir string) {
	t.Helper()
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	require.NoError(t, err)
	path := modulePath(gomod)
	require.NotEmpty(t, path, "%s/go.mod names no module", dir)

	git := exec.Command("git", "ls-files", "--cached", "--others", "--exclude-standard", ".")
	git.Dir = dir
	ls, err := git.Output()
	require.NoError(t, err, "git ls-files in %s", dir)
	files := strings.Fields(string(ls))
	var nested []string
	for _, f := range files {
		if d := filepath.Dir(f); filepath.Base(f) == "go.mod" && d != "." {
			nested = append(nested, d+"/")
		}
	}
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	for _, f := range files {
		if slices.ContainsFunc(nested, func(n string) bool { return strings.HasPrefix(f, n) }) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, f))
		if os.IsNotExist(err) {
			continue // deleted, not yet committed
		}
		require.NoError(t, err)
		w, err := zw.Create(path + "@" + releaseVersion + "/" + f)
		require.NoError(t, err)
		_, err = w.Write(data)
		require.NoError(t, err)
	}
	require.NoError(t, zw.Close())

	at := filepath.Join(proxy, path, "@v")
	require.NoError(t, os.MkdirAll(at, 0o755))
	for name, data := range map[string][]byte{
		"list":                   []byte(releaseVersion + "\n"),
		releaseVersion + ".info": []byte(`{"Version":"` + releaseVersion + `","Time":"2026-12-07T00:00:00Z"}`),
		releaseVersion + ".mod":  gomod,
		releaseVersion + ".zip":  zb.Bytes(),
	} {
		require.NoError(t, os.WriteFile(filepath.Join(at, name), data, 0o644))
	}
}

// modulePath returns the path a go.mod declares.
func modulePath(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		if p, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(p), `"`)
		}
	}
	return ""
}
