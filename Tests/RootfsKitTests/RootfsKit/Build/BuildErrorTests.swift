import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The build end to end with small real distros (bash hooks over busybox-static):
/// success, and every kind of bad input, which must fail clearly and damage nothing.
@Suite(.requires(.busybox), .tags(.busybox)) struct BuildWithTestDistrosTests {
    let distros: String
    let work: String

    init() throws {
        distros = try TestDistros.make([
            "bb": (TestDistros.busyboxConfig, TestDistros.busyboxLib),
            "nolib": ("OS_VERSION=1", nil),
            "nohook": ("OS_VERSION=1", "something_else() { :; }"),
            "badconfig": ("echo 'config is broken here' >&2\nexit 3", "build_rootfs() { :; }"),
            "failing": (TestDistros.busyboxConfig, """
                build_rootfs() {
                    echo "step one done"
                    echo "apt says: E: Unable to locate package nosuch" >&2
                    return 3
                }
                """),
            "lazy": (TestDistros.busyboxConfig, "build_rootfs() { info 'doing nothing'; }"),
            "excluded": ("OS_VERSION=1\nARCH_EXCLUDE_LIST=\"\(hostArchitecture()) s390x\"", "build_rootfs() { :; }"),
        ])
        work = try Fixtures.temporaryDirectory("work")
    }

    func rootfs(_ args: [String], env: [String: String] = [:]) async throws -> Fixtures.CLIResult {
        try await Fixtures.rootfs([args[0], "--distros-dir", distros] + args.dropFirst(), environment: env,
                                  workingDirectory: work)
    }

    @Test func busyboxDistroBuildsAnInitrdWithInitAndAgent() async throws {
        let r = try await Fixtures.rootfs(["build", "--distros-dir", distros, "bb", "--agent-init", "--initrd", work + "/bb.initrd",
                                           "--extra-pkg", "foo", "--extra-pkg", "bar"],
                                          environment: ["EXTRA_PKG": "baz"], workingDirectory: work)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("initrd: \(work)/bb.initrd"))
        let reader = try ArchiveReader(path: work + "/bb.initrd")
        var entries: [String: ArchiveReader.Entry] = [:]
        var agentData: [UInt8] = []
        var extra = ""
        while let (e, data) = try reader.next(withData: true) {
            entries[e.path] = e
            if e.path == "usr/bin/rootfs-agent" { agentData = data }
            if e.path == "etc/extra-packages" { extra = String(decoding: data, as: UTF8.self) }
        }
        #expect(entries["init"]?.symlink == "/sbin/init")
        #expect(entries["sbin/init"]?.symlink == "/usr/bin/rootfs-agent")
        #expect(entries["bin/busybox"] != nil)
        #expect(SHA256.hexDigest(of: agentData) == (try SHA256.hexDigest(ofFile: Fixtures.agentBinary)))
        #expect(extra == "baz\nfoo\nbar\n")
        #expect(entries["var/lib/osbuilder/osbuilder.yaml"] != nil)
        // Only the asked-for output: no rootfs directory kept, no temporary left.
        let left = try FileManager.default.contentsOfDirectory(atPath: work + "/build/bb")
        #expect(left == ["build.log"])
    }

    @Test func buildRecordNamesDistroPackagesAndAgent() async throws {
        let r = try await rootfs(["build", "bb", "--agent-init", "-r", work + "/tree"],
                                 env: ["EXTRA_PKGS": "extra1", "SOURCE_DATE_EPOCH": "1700000000"])
        #expect(r.status == 0, "\(r.stderr)")
        let yaml = try String(contentsOfFile: work + "/tree/var/lib/osbuilder/osbuilder.yaml", encoding: .utf8)
        #expect(yaml.contains("distro: \"bb\""))
        #expect(yaml.contains("extra: [\"extra1\"]"))
        #expect(yaml.contains("sha256: \"\(try SHA256.hexDigest(ofFile: Fixtures.agentBinary))\""))
        #expect(yaml.contains("rootfs-creation-time: \"2023-11-14T22:13:20Z\""))
        let check = try await Fixtures.rootfs(["check", work + "/tree", "--agent-init"])
        #expect(check.status == 0, "\(check.stderr)")
    }

    @Test func unknownDistroListsKnownOnes() async throws {
        let r = try await rootfs(["build", "nosuch"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("unknown distro 'nosuch'"))
        #expect(r.stderr.contains("bb") && r.stderr.contains("debian"))
    }

    @Test func distroWithoutLibOrHookOrWithBrokenConfig() async throws {
        let nolib = try await rootfs(["build", "nolib"])
        // No rootfs_lib.sh: Kata's default dnf build_rootfs, refused before anything is written without a repository.
        #expect(nolib.status != 0 && nolib.stderr.contains("this distro has no rootfs_lib.sh, so Kata's default build_rootfs (dnf --installroot) installs it"))
        let nohook = try await rootfs(["build", "nohook"])
        #expect(nohook.status != 0 && nohook.stderr.contains("does not define build_rootfs()"))
        let bad = try await rootfs(["build", "badconfig"])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("badconfig/config.sh failed (exit status 3)"))
        #expect(bad.stderr.contains("config is broken here"))
    }

    @Test func failingHookReportsStatusOutputAndLog() async throws {
        try "earlier".write(toFile: work + "/keep.initrd", atomically: true, encoding: .utf8)
        let r = try await rootfs(["build", "failing", "--agent-init", "--initrd", work + "/keep.initrd"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("build_rootfs() of distro 'failing' failed (exit status 3)"))
        #expect(r.stderr.contains("E: Unable to locate package nosuch"))
        #expect(r.stderr.contains(work + "/build/failing/build.log"))
        let log = try String(contentsOfFile: work + "/build/failing/build.log", encoding: .utf8)
        #expect(log.contains("step one done"))
        #expect(try String(contentsOfFile: work + "/keep.initrd", encoding: .utf8) == "earlier")
        #expect(try FileManager.default.contentsOfDirectory(atPath: work + "/build/failing") == ["build.log"])
    }

    @Test func hookThatWritesNothingIsAnError() async throws {
        let r = try await rootfs(["build", "lazy", "--agent-init", "--initrd", work + "/x"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("left the rootfs directory empty"))
    }

    @Test func nonEmptyRootfsDirNeedsForceAndForceReplacesIt() async throws {
        let tree = work + "/tree"
        try FS.makeDirectories(tree)
        try "mine".write(toFile: tree + "/precious", atomically: true, encoding: .utf8)
        let r = try await rootfs(["build", "bb", "--agent-init", "-r", tree])
        #expect(r.status != 0)
        #expect(r.stderr.contains("is not empty") && r.stderr.contains("--force"))
        #expect(try String(contentsOfFile: tree + "/precious", encoding: .utf8) == "mine")
        // Not a tree rootfs built: --force alone refuses it, --force-any-directory replaces it.
        let refused = try await rootfs(["build", "bb", "--agent-init", "-r", tree, "--force"])
        #expect(refused.status != 0 && refused.stderr.contains("holds no rootfs build"), "\(refused.stderr)")
        #expect(try String(contentsOfFile: tree + "/precious", encoding: .utf8) == "mine")
        let forced = try await rootfs(["build", "bb", "--agent-init", "-r", tree, "--force-any-directory"])
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(!FS.exists(tree + "/precious"))
        #expect(FS.isRegularFile(tree + "/bin/busybox"))
        // A tree rootfs built is replaced with --force alone.
        let again = try await rootfs(["build", "bb", "--agent-init", "-r", tree, "--force"])
        #expect(again.status == 0, "\(again.stderr)")
    }

    @Test func badAgentsAreRefusedByName() async throws {
        let script = work + "/agent.sh"
        try "#!/bin/sh\necho hi\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let plain = work + "/not-exec"
        try Data(contentsOf: URL(fileURLWithPath: Fixtures.agentBinary)).write(to: URL(fileURLWithPath: plain))
        chmod(plain, 0o644)
        for (agent, message) in [(work + "/missing", "no such file"), (plain, "is not executable"),
                                 (script, "is not an ELF executable")] {
            let r = try await rootfs(["build", "bb", "--agent-init", "--initrd", work + "/x", "--agent", agent])
            #expect(r.status != 0)
            #expect(r.stderr.contains("--agent \(agent)") && r.stderr.contains(message), "\(r.stderr)")
        }
        #expect(!FS.exists(work + "/x"))
    }

    @Test func outputInAMissingDirectory() async throws {
        let r = try await rootfs(["build", "bb", "--agent-init", "--initrd", work + "/no/such/dir/x.initrd"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("--initrd") && r.stderr.contains("does not exist"))
    }

    @Test func packageNamesWithShellSyntaxAreRefused() async throws {
        let marker = work + "/pwned"
        for bad in ["foo; touch \(marker)", "-oAPT::Get=1", "$(touch \(marker))"] {
            let r = try await rootfs(["build", "bb", "--agent-init", "--initrd", work + "/x", "--extra-pkg=\(bad)"])
            #expect(r.status != 0)
            #expect(r.stderr.contains("invalid package name"), "\(r.stderr)")
        }
        let viaEnv = try await rootfs(["build", "bb", "--agent-init", "--initrd", work + "/x"],
                                      env: ["EXTRA_PKG": "ok `touch \(marker)`"])
        #expect(viaEnv.status != 0)
        #expect(!FS.exists(marker))
    }

    @Test func excludedArchitectureIsRefused() async throws {
        let r = try await rootfs(["build", "excluded"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("cannot be built for \(hostArchitecture())"))
        #expect(r.stderr.contains("ARCH_EXCLUDE_LIST"))
    }

    @Test func writersRefuseTreesWithoutInitOrAgent() async throws {
        let tree = work + "/bare"
        try FS.makeDirectories(tree + "/sbin")
        // /sbin/init points to a file that exists on the host only.
        symlink("/bin/bash", tree + "/sbin/init")
        let r = try await Fixtures.rootfs(["initrd", tree, "-o", work + "/bare.initrd"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("/sbin/init points to /bin"))
        #expect(r.stderr.contains("the agent is missing"))
        #expect(!FS.exists(work + "/bare.initrd"))
        let image = try await Fixtures.rootfs(["image", tree, "-o", work + "/bare.img"])
        #expect(image.status != 0 && image.stderr.contains("is not a bootable rootfs"))
        let check = try await Fixtures.rootfs(["check", tree])
        #expect(check.status != 0 && check.stderr.contains("/sbin/init"))
    }

    @Test func listShowsWhereEachDistroCameFromAndShadowing() async throws {
        let other = try TestDistros.make(["bb": ("OS_VERSION=other", nil), "debian": ("OS_VERSION=mine", nil)])
        defer { FS.remove(other) }
        let r = try await Fixtures.rootfs(["list", "--distros-dir", other, "--json"], environment: ["ROOTFS_DISTROS_PATH": distros])
        #expect(r.status == 0, "\(r.stderr)")
        let listing = try JSONDecoder().decode(DistroListing.self, from: Data(r.stdout.utf8))
        let debian = try #require(listing.distros.first { $0.name == "debian" })
        #expect(debian.osVersion == "mine" && debian.foundIn == "--distros-dir")
        #expect(debian.shadows.contains { $0.hasSuffix("/distros/debian") })
        let bb = try #require(listing.distros.first { $0.name == "bb" })
        #expect(bb.directory == other + "/bb" && bb.shadows == [distros + "/bb"])
        let text = try await Fixtures.rootfs(["list", "--distros-dir", other], environment: ["ROOTFS_DISTROS_PATH": distros])
        #expect(text.stdout.contains("bb: \(other)/bb wins over \(distros)/bb"))
    }
}
