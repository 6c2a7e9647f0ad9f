import Foundation
import Testing
@testable import RootfsSupport

/// What a test needs from the machine, as Swift Testing tags (`swift test
/// --filter`/`--skip` by tag) and as conditions (`.requires(...)`).
extension Tag {
    @Tag static var root: Self
    @Tag static var network: Self
    @Tag static var qemu: Self
    @Tag static var docker: Self
    @Tag static var podman: Self
    @Tag static var dnf: Self
    @Tag static var busybox: Self
    @Tag static var swiftpm: Self
    @Tag static var qemuImg: Self
    @Tag static var veritysetup: Self
    @Tag static var efi: Self
    @Tag static var foreignArch: Self
    @Tag static var foreignBoot: Self
}

/// One thing a test needs. On a laptop a missing one skips the test with the
/// reason shown; in CI (`CI=true`), which provides everything, nothing is
/// skipped: the test runs and fails loudly if the machine lacks it, and
/// `.ci/run` fails a run whose log shows a skipped test.
enum Need: Sendable, CaseIterable, CustomStringConvertible {
    case root, network, qemu, docker, podman, dnf, busybox, swiftpm, qemuImg, veritysetup, efi, foreignArch, foreignBoot

    var description: String {
        switch self {
        case .root: "root"
        case .network: "Debian's package mirror"
        case .qemu: "qemu-system-x86_64"
        case .docker: "a Docker engine"
        case .podman: "podman"
        case .dnf: "dnf, rpmbuild and createrepo_c"
        case .busybox: "busybox-static (/bin/busybox)"
        case .swiftpm: "the swift package manager"
        case .qemuImg: "qemu-img (qemu-utils)"
        case .veritysetup: "veritysetup (cryptsetup-bin)"
        case .foreignArch: "qemu-system-aarch64, qemu-user-static, binfmt-support and apt knowing arm64 (apt: qemu-system-arm qemu-user-static binfmt-support; dpkg --add-architecture arm64)"
        case .foreignBoot: "qemu-system-s390x, qemu-system-ppc64 and apt knowing s390x and ppc64el (apt: qemu-system-misc qemu-system-ppc; dpkg --add-architecture s390x ppc64el)"
        case .efi: "OVMF, systemd's EFI stub, mtools, dosfstools, gdisk and objdump (apt: ovmf systemd-boot-efi mtools dosfstools gdisk binutils)"
        }
    }

    var tag: Tag {
        switch self {
        case .root: .root
        case .network: .network
        case .qemu: .qemu
        case .docker: .docker
        case .podman: .podman
        case .dnf: .dnf
        case .busybox: .busybox
        case .swiftpm: .swiftpm
        case .qemuImg: .qemuImg
        case .veritysetup: .veritysetup
        case .efi: .efi
        case .foreignArch: .foreignArch
        case .foreignBoot: .foreignBoot
        }
    }

    /// Whether this machine has it (probed once per test process).
    var isMet: Bool { Need.probed[self] ?? false }

    static let probed: [Need: Bool] = Dictionary(uniqueKeysWithValues: allCases.map { ($0, $0.probe()) })

    private func probe() -> Bool {
        switch self {
        case .root: return geteuid() == 0
        case .network: return Need.aptMirrorAnswers()
        case .qemu: return Need.onPath("qemu-system-x86_64")
        case .docker: return Need.succeeds("docker", ["info"])
        case .podman: return Need.onPath("podman")
        case .dnf: return Need.onPath("dnf") && Need.onPath("rpmbuild") && Need.onPath("createrepo_c")
        case .busybox: return FileManager.default.isExecutableFile(atPath: "/bin/busybox")
        case .swiftpm: return Need.onPath("swift")
        case .qemuImg: return Need.onPath("qemu-img")
        case .veritysetup: return Need.onPath("veritysetup") || FileManager.default.isExecutableFile(atPath: "/sbin/veritysetup")
        case .foreignArch:
            return Need.onPath("qemu-system-aarch64") && Need.onPath("update-binfmts")
                && FileManager.default.isReadableFile(atPath: "/usr/share/binfmts/qemu-aarch64")
                && Fixtures.status("/bin/sh", ["-c", "dpkg --print-foreign-architectures | grep -qx arm64"]) == 0
        case .foreignBoot:
            return Need.onPath("qemu-system-s390x") && Need.onPath("qemu-system-ppc64")
                && Fixtures.status("/bin/sh", ["-c", "dpkg --print-foreign-architectures | grep -qx s390x && dpkg --print-foreign-architectures | grep -qx ppc64el"]) == 0
        case .efi:
            return FileManager.default.isReadableFile(atPath: "/usr/share/ovmf/OVMF.fd")
                && FileManager.default.isReadableFile(atPath: "/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
                && ["mdir", "mtype", "objdump"].allSatisfy(Need.onPath)
                && (Need.onPath("fsck.vfat") || FileManager.default.isExecutableFile(atPath: "/sbin/fsck.vfat"))
                && (Need.onPath("sgdisk") || FileManager.default.isExecutableFile(atPath: "/sbin/sgdisk"))
        }
    }

    static func onPath(_ tool: String) -> Bool {
        (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
            .contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }
    }

    static func succeeds(_ tool: String, _ arguments: [String]) -> Bool {
        guard onPath(tool) else { return false }
        return Fixtures.status("/usr/bin/env", [tool] + arguments) == 0
    }

    /// The first host apt is configured with (no mirror is named in this repository),
    /// reached with a TCP connection to port 80 within a few seconds.
    static func aptMirrorAnswers() -> Bool {
        var texts: [String] = []
        for file in ["/etc/apt/sources.list"] + ((try? FileManager.default.contentsOfDirectory(atPath: "/etc/apt/sources.list.d")) ?? [])
            .filter { $0.hasSuffix(".list") || $0.hasSuffix(".sources") }.map({ "/etc/apt/sources.list.d/" + $0 }) {
            if let t = try? String(contentsOfFile: file, encoding: .utf8) { texts.append(t) }
        }
        // One-line entries ("deb URL suite…") and deb822 entries ("URIs: URL…"); comments skipped.
        let hosts = texts.joined(separator: "\n").split(separator: "\n")
            .filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("#") }
            .flatMap { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }) }
            .compactMap { word -> String? in
                guard word.hasPrefix("http://") || word.hasPrefix("https://") else { return nil }
                return word.split(separator: "/").dropFirst(1).first.map(String.init)
            }
        guard let host = hosts.first else { return false }
        // The host is an argument of the script, never part of its text.
        return Fixtures.status("/usr/bin/timeout", ["5", "bash", "-c", "exec 3<>/dev/tcp/\"$1\"/80", "probe", host]) == 0
    }

    static var inCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
}

extension Trait where Self == ConditionTrait {
    /// Runs only where the machine has `needs` (always in CI, where a missing one fails the test).
    static func requires(_ needs: Need...) -> Self {
        let missing = needs.filter { !$0.isMet }
        let text = missing.isEmpty ? "has everything it needs"
            : "needs " + missing.map(\.description).joined(separator: ", ")
        return .enabled(if: Need.inCI || missing.isEmpty, Comment(rawValue: text))
    }
}
