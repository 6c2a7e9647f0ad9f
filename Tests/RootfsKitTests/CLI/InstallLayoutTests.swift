import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// scripts/install.sh into a temporary PREFIX, and the installed rootfs used from another
/// directory: it finds its distros, its template and its agent by itself.
@Suite struct InstallLayoutTests {
    @Test func installedRootfsWorksFromAnotherDirectory() async throws {
        let prefix = try Fixtures.temporaryDirectory("install-prefix")
        let work = try Fixtures.temporaryDirectory("install-work")
        defer { FS.remove(prefix); FS.remove(work) }
        let install = try await Fixtures.run("/bin/bash", [Fixtures.repositoryRoot + "/scripts/install.sh",
                                                           "--products", Fixtures.productsDirectory, prefix])
        #expect(install.status == 0, "\(install.stderr)")
        let bin = prefix + "/bin/rootfs"
        for path in ["bin/rootfs", "libexec/rootfs/rootfs-agent", "share/rootfs/distros/debian/config.sh",
                     "share/rootfs/template/config.sh", "share/rootfs/commit", "share/man/man1/rootfs.1",
                     "share/man/man1/rootfs.build.1", "share/bash-completion/completions/rootfs",
                     "share/zsh/site-functions/_rootfs", "share/fish/vendor_completions.d/rootfs.fish"] {
            #expect(FS.exists(prefix + "/" + path), "\(path) was not installed")
        }
        let page = try String(contentsOfFile: prefix + "/share/man/man1/rootfs.build.1", encoding: .utf8)
        #expect(page.hasPrefix(".TH ROOTFS-BUILD 1") && page.contains("--from-manifest"))

        let installedList = try await Fixtures.run(bin, ["list", "--json"], environment: ["ROOTFS_DATA_DIR": ""], workingDirectory: work)
        #expect(installedList.status == 0, "\(installedList.stderr)")
        let distros = try #require(try jsonObject(installedList.stdout)["distros"] as? [[String: Any]])
        #expect(distros.contains { $0["name"] as? String == "debian" && $0["directory"] as? String == prefix + "/share/rootfs/distros/debian" },
                "\(installedList.stdout)")

        // A dry run plans with the installed agent (libexec/rootfs) and writes nothing.
        let dry = try await Fixtures.run(bin, ["build", "debian", "--dry-run", "--initrd", work + "/d.initrd"], workingDirectory: work)
        #expect(dry.stdout.contains(prefix + "/libexec/rootfs/rootfs-agent"), "\(dry.stdout)\n\(dry.stderr)")
        #expect(!FS.exists(work + "/d.initrd"))

        // The commit install.sh recorded (the binary is no longer in a checkout).
        let head = try await ProcessRunner().capture(ToolCommand("git", ["-C", Fixtures.repositoryRoot, "rev-parse", "--short=12", "HEAD"]))
        let version = try await Fixtures.run(bin, ["--version"], workingDirectory: work)
        #expect(version.stdout.contains("commit " + head.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)), "\(version.stdout)")

        // `rootfs new x` writes ./x from the installed template.
        let new = try await Fixtures.run(bin, ["new", "x"], workingDirectory: work)
        #expect(new.status == 0, "\(new.stderr)")
        #expect(FS.isRegularFile(work + "/x/config.sh") && FS.isRegularFile(work + "/x/rootfs_lib.sh"))
        #expect(!FS.exists(prefix + "/share/rootfs/distros/x"))

        // Completions: distro names through the binary, format values and files in the script.
        let bash = try String(contentsOfFile: prefix + "/share/bash-completion/completions/rootfs", encoding: .utf8)
        #expect(bash.contains("kernel+initrd") && bash.contains("---completion"))
        let zsh = try String(contentsOfFile: prefix + "/share/zsh/site-functions/_rootfs", encoding: .utf8)
        #expect(zsh.contains("_files"))
        let names = try await Fixtures.run(bin, ["---completion", "build", "--", "positional@0", "2", "1", "rootfs", "build", "d"],
                                           workingDirectory: work)
        #expect(names.stdout.split(separator: "\n").contains("debian"), "\(names.stdout) \(names.stderr)")
    }

    @Test func aBinaryWithoutItsDataNamesWhereItLooked() async throws {
        let dir = try Fixtures.temporaryDirectory("install-bare")
        defer { FS.remove(dir) }
        try FileManager.default.copyItem(atPath: Fixtures.rootfsBinary, toPath: dir + "/rootfs")
        let r = try await Fixtures.run(dir + "/rootfs", ["list"], environment: ["ROOTFS_DATA_DIR": ""], workingDirectory: dir)
        #expect(r.stdout.contains("no distros found") && r.stdout.contains("ROOTFS_DATA_DIR") && r.stdout.contains("/share/rootfs"),
                "\(r.stdout)")
        let build = try await Fixtures.run(dir + "/rootfs", ["build", "debian", "--dry-run"], environment: ["ROOTFS_DATA_DIR": ""],
                                           workingDirectory: dir)
        #expect(build.status != 0)
        #expect(build.stderr.contains("ROOTFS_DATA_DIR") && build.stderr.contains(FS.parent(dir) + "/share/rootfs"), "\(build.stderr)")
    }
}
