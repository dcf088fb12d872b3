package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// versionOut is what `lmx version` says, read from the binary's build info.
type versionOut struct {
	Version    string `json:"version"`            // the module version of the CLI, "(devel)" when built from a checkout
	Library    string `json:"library"`            // the version of github.com/lmx-go/lmx it is built with
	Go         string `json:"go"`                 // the Go release that built it
	Platform   string `json:"platform"`           // GOOS/GOARCH
	Revision   string `json:"revision,omitempty"` // the commit, when built from a checkout with VCS stamping
	Modified   bool   `json:"modified,omitempty"` // the checkout had changes not committed
	CommitTime string `json:"commit_time,omitempty"`
}

// buildVersion reads the build info the Go toolchain embeds in the binary:
// `go install .../cmd/lmx@v1.2.3` records v1.2.3, a build from a checkout
// "(devel)" and, unless -buildvcs=false, the commit.
func buildVersion() versionOut {
	out := versionOut{Version: "(unknown)", Library: "(unknown)", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return out
	}
	out.Version = bi.Main.Version
	out.Library = bi.Main.Version
	for _, d := range bi.Deps {
		if d.Path == "github.com/lmx-go/lmx" {
			out.Library = d.Version
		}
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			out.Revision = s.Value
		case "vcs.modified":
			out.Modified = s.Value == "true"
		case "vcs.time":
			out.CommitTime = s.Value
		}
	}
	return out
}

func cmdVersion(c *cli, cmd *command, args []string) error {
	f := c.newFlags(cmd)
	jsonOut := f.Bool("json", false, "print a JSON object")
	if _, err := f.parseArgs(args, 0); err != nil {
		return err
	}
	v := buildVersion()
	if *jsonOut {
		return printJSON(c.stdout, v)
	}
	fmt.Fprintf(c.stdout, "lmx %s\nlibrary  github.com/lmx-go/lmx %s\ngo       %s %s\n", v.Version, v.Library, v.Go, v.Platform)
	if v.Revision != "" {
		dirty := ""
		if v.Modified {
			dirty = " (modified)"
		}
		fmt.Fprintf(c.stdout, "commit   %s%s %s\n", v.Revision, dirty, v.CommitTime)
	}
	return nil
}
