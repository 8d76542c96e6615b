"""The shop's views: products in the catalog database, customers in the users database, orders in
the orders database. Missing rows are Quart's 404 (``get_or_404``, ``first_or_404``,
``one_or_404``); lists are pages (``paginate``, ``?page=2&per_page=10``)."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from quart import Blueprint, abort, request

from asyncbind import Pagination

from .models import Customer, Order, Product, db

bp = Blueprint("shop", __name__)

Json = dict[str, Any]


class _HasJson(Protocol):
    def to_json(self) -> Json: ...


_Item = TypeVar("_Item", bound=_HasJson)


async def _body(*fields: str) -> Json:
    """The request's JSON object, which must have ``fields``; a 400 otherwise."""
    data = await request.get_json(silent=True)
    if not isinstance(data, dict) or any(field not in data for field in fields):
        abort(400, description=f"Send a JSON object with {', '.join(fields)}.")
    return data


def _page(page: Pagination[_Item]) -> Json:
    return {
        "items": [item.to_json() for item in page],
        "page": page.page,
        "pages": page.pages,
        "total": page.total,
        "prev": page.prev_num,
        "next": page.next_num,
    }


# -- products (the default bind) ---------------------------------------------------------------


@bp.post("/products")
async def create_product() -> tuple[Json, int]:
    data = await _body("name", "price_cents")
    product = Product(name=data["name"], price_cents=data["price_cents"])
    db.session.add(product)
    await db.session.commit()
    return product.to_json(), 201


@bp.get("/products/<int:product_id>")
async def show_product(product_id: int) -> Json:
    product = await db.get_or_404(Product, product_id, description=f"No product {product_id}.")
    return product.to_json()


@bp.get("/products")
async def list_products() -> Json:
    return _page(await db.paginate(sa.select(Product).order_by(Product.id), max_per_page=50))


# -- customers (the "users" bind) --------------------------------------------------------------


@bp.post("/customers")
async def create_customer() -> tuple[Json, int]:
    data = await _body("email", "name")
    customer = Customer(email=data["email"], name=data["name"])
    db.session.add(customer)
    await db.session.commit()
    return customer.to_json(), 201


@bp.get("/customers/<int:customer_id>")
async def show_customer(customer_id: int) -> Json:
    customer = await db.get_or_404(Customer, customer_id, description=f"No customer {customer_id}.")
    return customer.to_json()


@bp.get("/customers/by-email/<email>")
async def find_customer(email: str) -> Json:
    customer = await db.first_or_404(
        sa.select(Customer).filter_by(email=email), description=f"No customer {email}."
    )
    return customer.to_json()


@bp.patch("/customers/<int:customer_id>")
async def rename_customer(customer_id: int) -> Json:
    data = await _body("name")
    customer = await db.get_or_404(Customer, customer_id, description=f"No customer {customer_id}.")
    customer.name = data["name"]
    await db.session.commit()
    return customer.to_json()


@bp.delete("/customers/<int:customer_id>")
async def delete_customer(customer_id: int) -> tuple[str, int]:
    customer = await db.get_or_404(Customer, customer_id, description=f"No customer {customer_id}.")
    await db.session.delete(customer)
    # The customer's orders are in another database: one commit, one transaction per bind.
    await db.session.execute(sa.delete(Order).where(Order.customer_id == customer_id))
    await db.session.commit()
    return "", 204


@bp.get("/customers")
async def list_customers() -> Json:
    return _page(await db.paginate(sa.select(Customer).order_by(Customer.id)))


# -- orders (the "orders" bind) ----------------------------------------------------------------


@bp.post("/orders")
async def create_order() -> tuple[Json, int]:
    data = await _body("customer_id", "product_id", "quantity")
    customer_id, product_id = data["customer_id"], data["product_id"]
    # No foreign keys across databases: the view checks that both exist.
    await db.get_or_404(Customer, customer_id, description=f"No customer {customer_id}.")
    await db.get_or_404(Product, product_id, description=f"No product {product_id}.")
    order = Order(customer_id=customer_id, product_id=product_id, quantity=data["quantity"])
    db.session.add(order)
    await db.session.commit()
    return order.to_json(), 201


@bp.get("/orders/<int:order_id>")
async def show_order(order_id: int) -> Json:
    order = await db.one_or_404(sa.select(Order).where(Order.id == order_id))
    return order.to_json()


@bp.get("/customers/<int:customer_id>/orders")
async def customer_orders(customer_id: int) -> Json:
    await db.get_or_404(Customer, customer_id, description=f"No customer {customer_id}.")
    orders = sa.select(Order).filter_by(customer_id=customer_id).order_by(Order.id)
    return _page(await db.paginate(orders))
