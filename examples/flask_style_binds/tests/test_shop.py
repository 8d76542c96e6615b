"""The shop over HTTP: CRUD in three MariaDB databases, Quart's 404s from ``get_or_404`` and the
others, pages from ``paginate`` and the query string."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from quart.typing import TestClientProtocol as Client
from shop.models import db


async def post(client: Client, path: str, body: dict[str, Any]) -> Any:
    response = await client.post(path, json=body)
    assert response.status_code == 201, await response.get_data(as_text=True)
    return await response.get_json()


async def get(client: Client, path: str) -> tuple[int, Any]:
    response = await client.get(path)
    return response.status_code, await response.get_json()


async def test_products_come_in_pages(client: Client) -> None:
    for n in range(1, 26):
        await post(client, "/products", {"name": f"lamp {n}", "price_cents": 100 * n})
    status, page = await get(client, "/products")
    assert status == 200
    assert (page["page"], page["pages"], page["total"], page["prev"], page["next"]) == (
        1,
        2,
        25,
        None,
        2,
    )
    assert [p["id"] for p in page["items"]] == list(range(1, 21))
    status, page = await get(client, "/products?page=2")
    assert [p["name"] for p in page["items"]] == [f"lamp {n}" for n in range(21, 26)]
    status, page = await get(client, "/products?per_page=200")  # max_per_page=50
    assert (page["pages"], len(page["items"])) == (1, 25)
    status, page = await get(client, "/products?page=2&per_page=10")
    assert [p["id"] for p in page["items"]] == list(range(11, 21))
    for query in ("page=3", "page=0", "page=two", "per_page=-5"):
        assert (await client.get(f"/products?{query}")).status_code == 404, query
    assert await get(client, "/products/7") == (
        200,
        {"id": 7, "name": "lamp 7", "price_cents": 700},
    )
    assert await get(client, "/products/99") == (404, {"error": "No product 99."})


async def test_customers_crud(client: Client) -> None:
    ada = await post(client, "/customers", {"email": "ada@example.com", "name": "Ada"})
    await post(client, "/customers", {"email": "bob@example.com", "name": "Bob"})
    assert await get(client, f"/customers/{ada['id']}") == (200, ada)
    assert await get(client, "/customers/by-email/ada@example.com") == (200, ada)
    assert await get(client, "/customers/by-email/eve@example.com") == (
        404,
        {"error": "No customer eve@example.com."},
    )
    response = await client.patch(f"/customers/{ada['id']}", json={"name": "Ada L."})
    assert (await response.get_json())["name"] == "Ada L."
    status, page = await get(client, "/customers?per_page=1")
    assert (status, page["pages"], page["items"][0]["name"]) == (200, 2, "Ada L.")
    assert (await client.delete(f"/customers/{ada['id']}")).status_code == 204
    assert await get(client, f"/customers/{ada['id']}") == (
        404,
        {"error": f"No customer {ada['id']}."},
    )
    assert (await client.delete(f"/customers/{ada['id']}")).status_code == 404
    response = await client.post("/customers", json={"email": "no name"})
    assert response.status_code == 400
    assert await response.get_json() == {"error": "Send a JSON object with email, name."}


async def test_orders_check_customers_and_products_in_the_other_databases(
    client: Client,
) -> None:
    ada = await post(client, "/customers", {"email": "ada@example.com", "name": "Ada"})
    lamp = await post(client, "/products", {"name": "lamp", "price_cents": 1500})
    order = {"customer_id": ada["id"], "product_id": lamp["id"], "quantity": 2}
    first = await post(client, "/orders", order)
    second = await post(client, "/orders", {**order, "quantity": 5})
    assert await get(client, f"/orders/{first['id']}") == (200, first)
    status, body = await get(client, "/orders/99")
    assert status == 404 and "not found" in body["error"].lower()  # Quart's own text
    missing_customer = await client.post("/orders", json={**order, "customer_id": 9})
    assert missing_customer.status_code == 404
    assert await missing_customer.get_json() == {"error": "No customer 9."}
    missing_product = await client.post("/orders", json={**order, "product_id": 9})
    assert await missing_product.get_json() == {"error": "No product 9."}
    status, page = await get(client, f"/customers/{ada['id']}/orders?per_page=1&page=2")
    assert (page["total"], page["pages"], page["items"]) == (2, 2, [second])
    assert await get(client, "/customers/9/orders") == (404, {"error": "No customer 9."})
    # Deleting the customer deletes its orders, in the orders database.
    assert (await client.delete(f"/customers/{ada['id']}")).status_code == 204
    assert (await client.get(f"/orders/{first['id']}")).status_code == 404


async def test_each_table_is_in_its_own_database(client: Client) -> None:
    await post(client, "/customers", {"email": "ada@example.com", "name": "Ada"})
    await post(client, "/products", {"name": "lamp", "price_cents": 1500})
    await post(client, "/orders", {"customer_id": 1, "product_id": 1, "quantity": 1})
    tables = {}
    for key, engine in db.engines.items():
        async with engine.connect() as conn:
            tables[key] = set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
    assert tables == {None: {"product"}, "users": {"customer"}, "orders": {"customer_order"}}
    assert len({engine.url.database for engine in db.engines.values()}) == 3
