/**
 * Caching class methods with the standard (TC39) decorator: `npx tsx examples/decorator.ts`.
 */
import { LayerCache } from "../src/index.js";

const cache = new LayerCache({ ttl: "5m" });
const products = cache.scope("products");

class ProductRepo {
  queries = 0;

  @products.cached({ key: (sku: string) => `product:${sku}` })
  async find(sku: string) {
    this.queries++;
    return { sku, price: 10 };
  }
}

const repo = new ProductRepo();
await repo.find("A1");
await repo.find("A1");
console.log(`queries: ${repo.queries}`); // 1
await products.remove("product:A1"); // the same key the decorator uses
await repo.find("A1");
console.log(`queries: ${repo.queries}`); // 2
await cache.close();
