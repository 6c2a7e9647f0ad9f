import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Incremental extra packages through the CLI, on a busybox guest: a build that only adds extra
/// packages to a cached tree starts from it and runs extend_rootfs with just the new ones; a
/// Kata-style directory without extend_rootfs is built in full, and the plan says why.
@Suite(.serialized, .requires(.root, .busybox), .tags(.root, .busybox)) struct IncrementalExtrasCLITests {
    static let config = """
    OS_NAME=debian
    OS_VERSION=incsuite
    INIT_PROCESS=agent
    PACKAGES=""
    HOST_TOOLS="busybox"
    """
    /// extend_rootfs records its arguments the way build_rootfs records EXTRA_PKGS, so a tree made
    /// incrementally holds what a cold build with the same extras holds.
    static let extendingLib = TestDistros.busyboxLib + #"""

    extend_rootfs() {
        local root=$1
        shift
        info "extending $root with: $*"
        for p in "$@"; do printf '%s\n' "$p" >> "$root/etc/extra-packages"; done
    }
    """#

    struct Build { var result: String; var why: [String]; var base: String?; var adding: [String]?; var key: String; var stderr: String; var tar: String }

    func build(_ distro: String, _ distros: String, cache: String, out: String, extras: [String], flags: [String] = []) async throws -> Build {
        let r = try await Fixtures.rootfs(["build", distro, "--distros-dir", distros, "--cache-dir", cache, "--format", "tar",
                                           "-O", out, "--no-manifest", "--json"] + extras.flatMap { ["--extra-pkg", $0] } + flags,
                                          environment: ["SOURCE_DATE_EPOCH": "1700000000"])
        #expect(r.status == 0, "\(r.stderr.suffix(2000))")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let tree = try #require(json["treeCache"] as? [String: Any], "\(r.stdout)")
        return Build(result: tree["result"] as? String ?? "", why: tree["why"] as? [String] ?? [], base: tree["base"] as? String,
                     adding: tree["adding"] as? [String], key: tree["key"] as? String ?? "", stderr: r.stderr,
                     tar: try SHA256.hexDigest(ofFile: out + "/\(distro).tar"))
    }

    @Test func extrasOnTopOfACachedTreeRunOnlyExtendRootfs() async throws {
        let distros = try TestDistros.make(["deb": (Self.config, Self.extendingLib), "kata": (Self.config, TestDistros.busyboxLib)])
        let dir = try Fixtures.temporaryDirectory("incremental")
        defer { FS.remove(dir); FS.remove(distros) }
        let cache = dir + "/cache"

        let plain = try await build("deb", distros, cache: cache, out: dir + "/1", extras: [])
        #expect(plain.result == "miss" && plain.stderr.contains("populating"))
        let one = try await build("deb", distros, cache: cache, out: dir + "/2", extras: ["alpha"])
        #expect(one.result == "incremental", "\(one.why)")
        #expect(one.base == plain.key && one.adding == ["alpha"])
        #expect(!one.stderr.contains("populating"), "build_rootfs did not run")
        #expect(one.stderr.contains("with: alpha"), "extend_rootfs got the new package: \(one.stderr.suffix(1500))")
        // The base with the most extras wins: only beta is installed.
        let two = try await build("deb", distros, cache: cache, out: dir + "/3", extras: ["alpha", "beta"])
        #expect(two.result == "incremental" && two.base == one.key && two.adding == ["beta"], "\(two.why) \(String(describing: two.base))")
        #expect(two.stderr.contains("with: beta") && !two.stderr.contains("with: alpha"))
        // Stored under its own key: the same build again is a hit.
        let again = try await build("deb", distros, cache: cache, out: dir + "/4", extras: ["alpha", "beta"])
        #expect(again.result == "hit" && again.tar == two.tar)
        // The incremental tree is what a cold build with the same extras makes.
        let cold = try await build("deb", distros, cache: cache, out: dir + "/5", extras: ["alpha", "beta"], flags: ["--no-cache"])
        #expect(cold.stderr.contains("populating") && cold.tar == two.tar)
        // Only the plain entry's extras are a subset of gamma's: built from it.
        let other = try await build("deb", distros, cache: cache, out: dir + "/6", extras: ["gamma"])
        #expect(other.result == "incremental" && other.base == plain.key && other.adding == ["gamma"], "\(other.why)")

        // A Kata-style directory without extend_rootfs: a full build that says why.
        let kataPlain = try await build("kata", distros, cache: cache, out: dir + "/k1", extras: [])
        #expect(kataPlain.result == "miss")
        let kata = try await build("kata", distros, cache: cache, out: dir + "/k2", extras: ["alpha"])
        #expect(kata.result == "miss" && kata.stderr.contains("populating"))
        #expect(kata.why.contains { $0.contains("defines no extend_rootfs(): a full build") }, "\(kata.why)")

        // The dry run says it too.
        let plan = try await Fixtures.rootfs(["build", "deb", "--distros-dir", distros, "--cache-dir", cache, "--format", "tar",
                                              "-O", dir + "/7", "--extra-pkg", "alpha", "--extra-pkg", "delta", "--dry-run"],
                                             environment: ["SOURCE_DATE_EPOCH": "1700000000"])
        #expect(plan.stdout.contains("tree: incremental") && plan.stdout.contains("it lacks delta"), "\(plan.stdout.suffix(1500))")
        // ...and names what runs instead of build_rootfs: extend_rootfs with the new package only.
        #expect(plan.stdout.contains("extend_rootfs will run") && !plan.stdout.contains("build_rootfs will run"), "\(plan.stdout.suffix(1500))")
        #expect(plan.stdout.split(separator: "\n").contains { $0.contains("extend_rootfs ") && $0.hasSuffix(" delta") }, "\(plan.stdout.suffix(1500))")
    }
}

/// The lock file's format: what --lock writes reads back, and hostile files are refused with the line.
@Suite struct PackageLockTests {
    let lock = PackageLock(distro: "debian", osVersion: "trixie", architecture: "x86_64", database: .dpkg,
                           packages: [.init(name: "bash", version: "5.2.37-2+b10"), .init(name: "bsdutils", version: "1:2.41.5-0+deb13u1")])

    @Test func roundTripAndSpecifications() throws {
        let parsed = try PackageLock.parse(Array(lock.text.utf8), source: "L")
        #expect(parsed == lock)
        #expect(parsed.specifications == ["bash=5.2.37-2+b10", "bsdutils=1:2.41.5-0+deb13u1"])
        // A release with a '~' and a distro without OS_VERSION both read back.
        for release in ["12.4~rc1", ""] {
            var other = lock
            other.osVersion = release
            #expect(try PackageLock.parse(Array(other.text.utf8), source: "L") == other, "os-version '\(release)'")
        }
        var rpm = lock
        rpm.database = .rpm
        #expect(rpm.specifications == ["bash-5.2.37-2+b10", "bsdutils-1:2.41.5-0+deb13u1"])
    }

    @Test func hostileFilesAreRefusedNamingTheLine() throws {
        let text = lock.text
        let cases: [(String, String)] = [
            (text.replacingOccurrences(of: "package bash ", with: "package -oAPT::Foo "), "line 8"),
            (text.replacingOccurrences(of: "5.2.37-2+b10", with: "--allow-downgrades"), "is not a version of bash"),
            (text.replacingOccurrences(of: "5.2.37-2+b10", with: "5.2\u{1b}[2J"), "control character"),
            (text + "package bash 5.2\n", "listed twice"),
            (text.replacingOccurrences(of: "rootfs-lock 1", with: "rootfs-lock 2"), "is not 'rootfs-lock 1'"),
            (text + "package a b c\n", "is not a lock line"),
            (text.replacingOccurrences(of: "database dpkg", with: "database none"), "not dpkg, rpm or apk"),
            (text.replacingOccurrences(of: "package bash ", with: "package b$(x) "), "is not a package name"),
            ("", "no 'rootfs-lock 1' line"),
        ]
        for (bad, expected) in cases {
            #expect {
                try PackageLock.parse(Array(bad.utf8), source: "bad.lock")
            } throws: { error in
                let message = (error as? RootfsError)?.message ?? ""
                return message.contains("bad.lock") && message.contains(expected)
            }
        }
        #expect(throws: RootfsError.self) { try PackageLock.parse([0xff, 0xfe], source: "bin") }
    }

    @Test func theMissingPackageIsFoundInEachManagersWords() {
        #expect(lock.missing(in: ["E: Version '9.9' for 'bash' was not found"])?.name == "bash")
        var rpm = lock
        rpm.database = .rpm
        #expect(rpm.missing(in: ["No match for argument: bsdutils-1:2.41.5-0+deb13u1"])?.name == "bsdutils")
        #expect(rpm.missing(in: ["Error: Unable to find a match: bash-5.2.37-2+b10"])?.name == "bash")
        #expect(rpm.missing(in: ["Error: Unable to find a match: bash-5.2.37-2+b100"]) == nil, "another version is not this one")
        var apk = lock
        apk.database = .apk
        #expect(apk.missing(in: ["ERROR: unable to select packages:", "  bash=5.2.37-2+b10 (no such package):"])?.name == "bash")
        #expect(lock.missing(in: ["E: Unable to locate package foo"]) == nil)
    }

    @Test func aLockForAnotherDistroOrArchitectureIsRefused() {
        #expect(throws: RootfsError.self) { try lock.check(distro: "ubuntu", osVersion: "trixie", architecture: "x86_64", source: "L") }
        #expect(throws: RootfsError.self) { try lock.check(distro: "debian", osVersion: "trixie", architecture: "aarch64", source: "L") }
        #expect(throws: Never.self) { try lock.check(distro: "debian", osVersion: "trixie", architecture: "x86_64", source: "L") }
    }
}
