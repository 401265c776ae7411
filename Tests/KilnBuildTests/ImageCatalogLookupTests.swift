import Foundation
import Testing
@testable import KilnMachine

/// Where the catalog (and with it the scripts/build-image Kiln runs) comes from: the executable's checkout or
/// KILN_CATALOG, never the working directory.
@Suite("Image catalog lookup")
struct ImageCatalogLookupTests {
    /// checkout/{images/catalog.json, scripts/build-image, .build/debug/kiln}, and bin/kiln, a link to the executable.
    struct Checkout {
        let root: String
        var checkout: String { root + "/checkout" }
        var executable: String { checkout + "/.build/debug/kiln" }
        var link: String { root + "/bin/kiln" }

        init() throws {
            root = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-catalog-\(UUID().uuidString)").path
            let fileManager = FileManager.default
            for directory in ["/checkout/images", "/checkout/scripts", "/checkout/.build/debug", "/bin", "/elsewhere/.build/debug"] {
                try fileManager.createDirectory(atPath: root + directory, withIntermediateDirectories: true)
            }
            try #"{"images": []}"#.write(toFile: checkout + "/images/catalog.json", atomically: true, encoding: .utf8)
            #expect(fileManager.createFile(atPath: checkout + "/scripts/build-image", contents: Data("#!/bin/sh\n".utf8),
                                           attributes: [.posixPermissions: 0o755]))
            #expect(fileManager.createFile(atPath: executable, contents: Data()))
            #expect(fileManager.createFile(atPath: root + "/elsewhere/.build/debug/kiln", contents: Data()))
            try fileManager.createSymbolicLink(atPath: link, withDestinationPath: executable)
        }

        func remove() { try? FileManager.default.removeItem(atPath: root) }
    }

    @Test func theCatalogIsFoundWalkingUpFromTheExecutableThroughItsLink() throws {
        let checkout = try Checkout()
        defer { checkout.remove() }
        let expected = checkout.checkout + "/images/catalog.json"
        #expect(ImageCatalog.findCatalog(executable: checkout.executable, environment: [:]) == expected)
        #expect(ImageCatalog.findCatalog(executable: checkout.link, environment: [:]) == expected, "the link on PATH is resolved")
        let catalog = ImageCatalog(catalogPath: expected, entries: [], buildCacheDirectory: checkout.root, importedDirectory: checkout.root)
        #expect(catalog.buildScript == checkout.checkout + "/scripts/build-image", "the build script is the catalog's checkout's")
    }

    @Test func theWorkingDirectoryIsNeverSearched() throws {
        let checkout = try Checkout()
        defer { checkout.remove() }
        // swift test runs in the package root, whose images/catalog.json the old lookup found through the working
        // directory; an executable outside any checkout now finds nothing.
        let workingDirectory = FileManager.default.currentDirectoryPath
        #expect(ImageCatalog.findCatalog(executable: checkout.root + "/elsewhere/.build/debug/kiln", environment: [:]) == nil,
                "nothing above the executable; \(workingDirectory) is not looked at")
    }

    @Test func kilnCatalogNamesTheFile() throws {
        let checkout = try Checkout()
        defer { checkout.remove() }
        let named = checkout.root + "/mine.json"
        #expect(ImageCatalog.findCatalog(executable: checkout.executable, environment: ["KILN_CATALOG": named]) == named)
        #expect(ImageCatalog.findCatalog(executable: checkout.executable, environment: ["KILN_CATALOG": ""]) == checkout.checkout + "/images/catalog.json")
    }

    @Test func thisProcessFindsItsCheckoutsCatalog() {
        let found = ImageCatalog.findCatalog(executable: ImageCatalog.executablePath, environment: [:])
        #expect(found.map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().path }
                == URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                    .appendingPathComponent("images/catalog.json").resolvingSymlinksInPath().path,
                "the test bundle lives in this checkout's .build")
    }
}
