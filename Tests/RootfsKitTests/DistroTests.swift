import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

@Suite struct DistroCatalogTests {
    @Test func earlierDirectoriesWinAndShadowingIsReported() throws {
        let a = try TestDistros.make(["alpha": ("OS_VERSION=a", "build_rootfs() { :; }"), "shared": ("OS_VERSION=from-a", nil)])
        let b = try TestDistros.make(["shared": ("OS_VERSION=from-b", nil), "beta": ("", nil)])
        defer { FS.remove(a); FS.remove(b) }
        let catalog = DistroCatalog.standard(distrosDirs: [a], environment: ["ROOTFS_DISTROS_PATH": b])
        let entries = catalog.entries()
        let names = entries.map(\.distro.name)
        #expect(names.contains("alpha") && names.contains("beta") && names.contains("shared"))
        let shared = try #require(entries.first { $0.distro.name == "shared" })
        #expect(shared.distro.directory == a + "/shared")
        #expect(shared.distro.searchDirectory.origin == .option)
        #expect(shared.shadowed.map(\.directory) == [b + "/shared"])
        #expect(try catalog.find("beta").searchDirectory.origin == .environment)
        #expect(try catalog.find("debian").searchDirectory.origin == .builtIn)
    }

    @Test func unknownDistroListsTheKnownOnes() throws {
        let catalog = DistroCatalog.standard(distrosDirs: [], environment: [:])
        let error = try #require(throws: RootfsError.self) { try catalog.find("nosuch") }
        #expect(error.message.contains("unknown distro 'nosuch'"))
        #expect(error.hint?.contains("debian") == true)
    }

    @Test func directoryWithoutConfigIsNamed() throws {
        let dir = try Fixtures.temporaryDirectory("distros")
        defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/empty")
        let catalog = DistroCatalog.standard(distrosDirs: [dir], environment: [:])
        let error = try #require(throws: RootfsError.self) { try catalog.find("empty") }
        #expect(error.message.contains("has no config.sh"))
        #expect(error.message.contains(dir + "/empty"))
    }
}

@Suite struct ConfigEvaluatorTests {
    func distro(_ config: String, lib: String? = "build_rootfs() { :; }") throws -> (Distro, String) {
        let dir = try TestDistros.make(["d": (config, lib)])
        return (try DistroCatalog(searchPath: [SearchDirectory(path: dir, origin: .option)]).find("d"), dir)
    }

    @Test func bashEvaluatesAndEnvironmentOverrides() async throws {
        let (d, dir) = try distro("""
        OS_VERSION=${OS_VERSION:-trixie}
        PACKAGES="a b"
        [ "$OS_VERSION" = bookworm ] && PACKAGES="$PACKAGES old"
        MY_OWN=$(echo computed)
        [ "$ARCH" = nonexistent ] && PACKAGES=never
        """)
        defer { FS.remove(dir) }
        let plain = try await ConfigEvaluator().evaluate(d, environment: ["PATH": "/usr/bin:/bin"])
        #expect(plain.osVersion == "trixie")
        #expect(plain.packages == ["a", "b"])
        #expect(plain["MY_OWN"] == "computed")
        let overridden = try await ConfigEvaluator().evaluate(d, environment: ["PATH": "/usr/bin:/bin", "OS_VERSION": "bookworm"])
        #expect(overridden.osVersion == "bookworm")
        #expect(overridden.packages == ["a", "b", "old"])
    }

    @Test func syntaxErrorNamesTheFile() async throws {
        let (d, dir) = try distro("if then fi (")
        defer { FS.remove(dir) }
        let error = try await #require(throws: RootfsError.self) {
            try await ConfigEvaluator().evaluate(d, environment: [:])
        }
        #expect(error.message.contains(d.configPath))
        #expect(error.message.contains("syntax error"))
    }

    @Test func configThatExitsFails() async throws {
        let (d, dir) = try distro("echo 'broken config' >&2; exit 3")
        defer { FS.remove(dir) }
        let error = try await #require(throws: RootfsError.self) {
            try await ConfigEvaluator().evaluate(d, environment: [:])
        }
        #expect(error.message.contains("sourcing \(d.configPath) failed (exit status 3)"))
        #expect(error.details.contains("broken config"))
    }

    @Test func missingHookFunctionAndMissingLibrary() async throws {
        let (d, dir) = try distro("OS_VERSION=1", lib: "other() { :; }")
        defer { FS.remove(dir) }
        let error = try await #require(throws: RootfsError.self) {
            try await ConfigEvaluator().evaluate(d, environment: [:])
        }
        #expect(error.message == "\(d.libraryPath) does not define build_rootfs()")

        // No rootfs_lib.sh is Kata's centos shape: the default dnf build_rootfs builds it, which needs dnf or yum.
        let (d2, dir2) = try distro("OS_VERSION=1", lib: nil)
        defer { FS.remove(dir2) }
        let withDefault = try await ConfigEvaluator().evaluate(d2, environment: [:])
        #expect(withDefault.undeclaredHostTools.map(\.alternatives) == [["dnf", "yum"]])
        // Listing does not need the hook.
        let listed = try await ConfigEvaluator().evaluate(d2, environment: [:], requireHook: false)
        #expect(listed.osVersion == "1")
    }

    @Test func valuesWithSpacesNewlinesAndQuotesSurvive() async throws {
        let (d, dir) = try distro(#"WEIRD="a 'b' \"c\"$(printf '\nline2')""#)
        defer { FS.remove(dir) }
        let c = try await ConfigEvaluator().evaluate(d, environment: [:])
        #expect(c["WEIRD"] == "a 'b' \"c\"\nline2")
    }
}
